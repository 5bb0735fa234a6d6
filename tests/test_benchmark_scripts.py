"""benchmarks/model_tables.sh's bookkeeping, on the CPU: which distillations it starts with which recipe,
that a second call resumes instead of repeating them, and which EPD table it keeps for the final quality
table; and that every study script's eval step can run again once it has finished. The CLI is replaced
(the script's CLI variable) by a recorder that writes what each command would, so no GPU and no training
is needed; the commands' own behaviour is tested elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "model_tables.sh"

# writes each distill's --out and each eval's --out (one cell per NFE, FID from FIDS by recipe folder) and
# --markdown, refusing an existing --markdown without --force as the real CLI does; logs every call as one
# JSON line
RECORDER = r"""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1] if name in args else None
with open(os.environ["CALLS"], "a") as log:
    log.write(json.dumps(args) + "\n")
if args[0] == "distill":
    Path(opt("--out")).write_text(json.dumps({"student": opt("--student"), "nfe": opt("--nfe")}))
elif args[0] == "eval":
    recipe = Path(opt("--predictor-dir") or ".").name
    fids = json.loads(os.environ["FIDS"])
    cells = [
        {"solver": s, "nfe": int(n), "fid": fids.get(f"{recipe}/{s}{n}")}
        for s in opt("--solvers").split(",") for n in opt("--nfe").split(",")
    ]
    Path(opt("--out")).write_text(json.dumps({"cells": cells}))
    if opt("--markdown"):
        if Path(opt("--markdown")).exists() and "--force" not in args:
            sys.exit(f"error: {opt('--markdown')} already exists; pass --force to replace it")
        Path(opt("--markdown")).write_text("table")
"""


def _run(tmp_path: Path, *args: str, fids: dict[str, float] | None = None, script: Path = SCRIPT) -> list[list[str]]:
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    (tmp_path / "recorder.py").write_text(RECORDER)
    env = {**os.environ, "CLI": f"{sys.executable} {tmp_path / 'recorder.py'}", "CALLS": str(calls)}
    env["FIDS"] = json.dumps(fids or {})
    done = subprocess.run(["bash", str(script), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def _opt(call: list[str], name: str) -> str | None:
    return call[call.index(name) + 1] if name in call else None


pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_distill_starts_every_run_once_with_its_recipe_and_resumes(tmp_path):
    work = tmp_path / "work"
    calls = _run(tmp_path, "distill", str(work), "ckpt.safetensors", "inception.pt")
    runs = {(Path(_opt(c, "--out")).parent.name, Path(_opt(c, "--out")).stem): c for c in calls}
    assert len(runs) == len(calls)  # nothing started twice
    amed = {stem for folder, stem in runs if folder == "amed"}
    assert amed == {f"{s}{n}" for s in ("amed", "amed_ipndm", "amed_ipndm_uneven", "amed_dpmpp") for n in (3, 5, 7, 9)}
    epd = {(folder, stem) for folder, stem in runs if folder != "amed"}
    published = {("published", f"{s}{n}") for s in ("epd", "epd_ipndm") for n in (3, 5)}
    ipndm = {("ipndm", f"{s}{n}") for s in ("epd", "epd_ipndm") for n in (5, 7, 9)}
    assert epd == published | ipndm
    for (folder, stem), call in runs.items():
        assert _opt(call, "--student") == stem.rstrip("0123456789") and _opt(call, "--nfe") == stem[-1]
        assert _opt(call, "--ckpt") == "ckpt.safetensors" and _opt(call, "--device") == "cuda"
        teacher = (_opt(call, "--teacher"), _opt(call, "--teacher-m"), _opt(call, "--teacher-inner"))
        if folder == "amed":  # the command's defaults
            assert teacher == (None, None, None) and "--inception" not in call
        else:  # EPD: the feature loss, and the iPNDM teacher in ipndm/
            assert _opt(call, "--inception") == "inception.pt"
            assert teacher == (("ipndm", "5", "1") if folder == "ipndm" else (None, None, None))
    assert _run(tmp_path, "distill", str(work), "ckpt.safetensors", "inception.pt") == []  # all there: resumes


def test_eval_keeps_the_lower_fid_recipe_of_each_table_and_measures_everything_once(tmp_path):
    work = tmp_path / "work"
    for folder, stems in {
        "amed": ["amed5", "amed_ipndm5"],
        "published": ["epd5", "epd_ipndm5", "epd3"],
        "ipndm": ["epd5", "epd_ipndm5"],
    }.items():
        (work / folder).mkdir(parents=True)
        for stem in stems:
            (work / folder / f"{stem}.pt").write_text(f"{folder}/{stem}")
    fids = {"published/epd5": 18.7, "ipndm/epd5": 12.3, "published/epd_ipndm5": 9.1, "ipndm/epd_ipndm5": 10.7}
    fids["published/epd3"] = 31.0
    calls = _run(tmp_path, "eval", str(work), "ckpt.safetensors", "data.zip", "inception.pt", fids=fids)
    pred = work / "pred"
    kept = {p.name: p.read_text() for p in pred.iterdir()}
    assert kept == {
        "amed5.pt": "amed/amed5",
        "amed_ipndm5.pt": "amed/amed_ipndm5",
        "epd5.pt": "ipndm/epd5",  # 12.3 < 18.7
        "epd_ipndm5.pt": "published/epd_ipndm5",  # 9.1 < 10.7
        "epd3.pt": "published/epd3",  # the only one
    }
    study = [c for c in calls if _opt(c, "--predictor-dir") != str(pred)]
    measured = {(Path(_opt(c, "--predictor-dir")).name, _opt(c, "--solvers")): _opt(c, "--nfe") for c in study}
    assert len(measured) == len(study)  # each recipe's table of each student, once, at the NFEs distilled
    assert measured == {
        ("published", "epd"): "3,5",
        ("published", "epd_ipndm"): "5",
        ("ipndm", "epd"): "5",
        ("ipndm", "epd_ipndm"): "5",
    }
    (final,) = [c for c in calls if _opt(c, "--predictor-dir") == str(pred)]
    assert _opt(final, "--solvers").split(",")[:4] == ["euler", "heun", "dpm2", "ipndm"]
    assert {"amed", "epd", "epd_ipndm"} <= set(_opt(final, "--solvers").split(","))
    assert _opt(final, "--num") == "10000" and "--resume" in final and _opt(final, "--data") == "data.zip"


@pytest.mark.parametrize("name", ["model_tables.sh", "epd_study.sh", "solver_variants.sh"])
def test_eval_runs_again_after_it_has_finished(tmp_path, name):
    """A finished eval step run again (to add tables distilled since) resumes its JSON and rewrites its own
    table instead of stopping at the .md the first run wrote."""
    work = tmp_path / "work"
    for folder in ("amed", "published", "ipndm", "pred"):
        (work / folder).mkdir(parents=True)
    (work / "ipndm" / "epd7.pt").write_text("ipndm/epd7")
    (work / "amed" / "amed7.pt").write_text("amed/amed7")
    args = (
        ["eval", str(work), "data.zip", "inception.pt"]
        if name == "solver_variants.sh"
        else ["eval", str(work), "ckpt.safetensors", "data.zip", "inception.pt"]
    )
    script = ROOT / "benchmarks" / name
    first = _run(tmp_path, *args, script=script)
    assert first and all("--resume" in c for c in first)
    assert _run(tmp_path, *args, script=script) == first  # the same calls again, none refused
