"""Which distillation recipe gives the best AMED predictors for a model? (needs a CUDA GPU)

    export PYTHONPATH=$PWD
    python benchmarks/distill_study.py --ckpt amed_deploy/assets/fashion_mnist_edm.safetensors \\
        --work work/study --out results/study --minutes 9

Stage 1 distils every NFE-5 variant in VARIANTS and measures each one's RMSE against a high-accuracy
solution of the ODE (Heun, 256 polynomial points) on held-out noise, next to the training-free
solvers at the same NFE and the predictors currently bundled. Stage 2 takes the recipe with the
lowest RMSE for each student and distils it for the other NFEs (--students limits stages 1-2 to some
students). Stage 3 compares every predictor in --work/final (put earlier winners there to have them
checked too) with the bundled one for the same student and NFE, and keeps the one closer to the
reference. Everything is kept in --work; a call cut short by --minutes (or a later call on the same
warm machine) resumes there. Each call writes study.json and predictors.tar (the kept predictors,
amed{N}.pt / amed_ipndm{N}.pt) to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import tarfile
import time
from pathlib import Path

from amed_deploy import assets
from amed_deploy.amed_network import AMEDNetwork
from amed_deploy.checkpoint.build import build_model
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.distill import DistillConfig, distill_predictor
from amed_deploy.evaluation.quality import ReferenceCache, rmse_to_reference
from amed_deploy.evaluation.table import baseline_afs, device_name
from amed_deploy.files import atomic_write_bytes, file_sha256
from amed_deploy.predictor_file import load_predictor, save_predictor
from amed_deploy.sampling import baseline_sampler

# NFE-5 recipes. "paper" is the published AMED-Solver recipe (teacher Heun, M = 1, time_uniform);
# the others swap in a more accurate teacher, the polynomial schedule, or the time scale a.
VARIANTS = {
    "amed/paper": DistillConfig(teacher="heun", teacher_m=1),
    "amed/ipndm5-uniform": DistillConfig(teacher="ipndm", teacher_m=5),
    "amed/ipndm5-poly": DistillConfig(teacher="ipndm", teacher_m=5, schedule="polynomial"),
    "amed/ipndm5-poly-a0.2": DistillConfig(teacher="ipndm", teacher_m=5, schedule="polynomial", scale_time=0.2),
    "amed_ipndm/ipndm5-uniform": DistillConfig(student="amed_ipndm", teacher="ipndm", teacher_m=5),
    "amed_ipndm/ipndm5-poly": DistillConfig(student="amed_ipndm", teacher="ipndm", teacher_m=5, schedule="polynomial"),
}
BASELINES = ("euler", "dpm2", "ipndm", "dpmpp3m")
FINAL_NFES = (3, 5, 7, 9)


def _save_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def _winners(rmse: dict[str, float]) -> dict[str, str]:
    best: dict[str, str] = {}
    for name in rmse:
        student = name.split("/")[0]
        if student not in best or rmse[name] < rmse[best[student]]:
            best[student] = name
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, default=assets.MODEL)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--num", type=int, default=512, help="held-out samples for the RMSE")
    ap.add_argument("--kimg", type=float, default=10.0)
    ap.add_argument("--minutes", type=float, default=9.0)
    ap.add_argument("--students", default="amed,amed_ipndm", help="which students' variants to distil")
    args = ap.parse_args()
    deadline = time.monotonic() + 60 * args.minutes
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(args.ckpt)
    net = build_model(load_checkpoint(args.ckpt)).to(args.device).eval()
    state_path = args.work / "study.json"
    study = json.loads(state_path.read_text()) if state_path.exists() else {"rmse": {}, "seconds": {}}
    study.update(checkpoint_sha256=sha, kimg=args.kimg, num=args.num, device=device_name(args.device))

    def distil(name: str, cfg: DistillConfig, path: Path) -> bool:
        """Distil into path unless it is there; False when the time is up first."""
        if path.exists():
            return True
        spent = max(study["seconds"].values(), default=60.0)
        if time.monotonic() + 1.5 * spent > deadline:
            return False
        start = time.monotonic()
        save_predictor(path, distill_predictor(net, sha, cfg, args.device, progress=False))
        study["seconds"][name] = time.monotonic() - start
        print(f"{name}: distilled in {study['seconds'][name]:.0f} s", flush=True)
        _save_json(state_path, study)
        return True

    variants = {k: v for k, v in VARIANTS.items() if k.split("/")[0] in args.students.split(",")}
    cache = ReferenceCache("heun", 256)

    def rmse_of(files: dict[str, Path | str], baselines: tuple[str, ...], nfe: int) -> dict[str, float]:
        """NFE-`nfe` RMSE against the reference on held-out noise, for predictor files and baselines."""
        cfgs, networks = {}, {}
        for name, file in files.items():
            bundle = load_predictor(file, checkpoint_sha256=sha)
            cfgs[name], networks[name] = bundle.sampler, AMEDNetwork(net, bundle.predictor.to(args.device), bundle.tap)
        for solver in baselines:
            cfgs[solver] = baseline_sampler(net, solver, nfe, "polynomial", baseline_afs(solver, nfe))
        return rmse_to_reference(
            AMEDNetwork(net), cfgs, args.num, 128, seed0=7_000_000, device=args.device, cache=cache, networks=networks
        )

    complete = True
    for name, cfg in variants.items():
        cfg = dataclasses.replace(cfg, kimg=args.kimg)
        complete &= distil(name, cfg, args.work / (name.replace("/", "--") + ".pt"))

    if complete and not all(name in study["rmse"] for name in variants):
        files: dict[str, Path | str] = {name: args.work / (name.replace("/", "--") + ".pt") for name in variants}
        for student in {name.split("/")[0] for name in variants}:  # the bundled one, if it fits this checkpoint
            shipped = assets.HERE / f"{student}5.pt"
            if shipped.exists() and load_predictor(shipped, allow_mismatch=True).checkpoint_sha256 == sha:
                files[f"shipped/{student}"] = shipped
        study["rmse"].update(rmse_of(files, BASELINES, 5))
        _save_json(state_path, study)
        for name, value in sorted(study["rmse"].items(), key=lambda kv: kv[1]):
            print(f"  NFE 5 RMSE {value:.4f}  {name}")

    final = args.work / "final"
    final.mkdir(exist_ok=True)
    if complete:
        study["winners"] = _winners({k: v for k, v in study["rmse"].items() if k in variants})
        for student, name in study["winners"].items():
            for nfe in FINAL_NFES:
                cfg = dataclasses.replace(VARIANTS[name], nfe=nfe, kimg=args.kimg)
                src = args.work / (name.replace("/", "--") + ".pt")
                path = final / f"{student}{nfe}.pt"
                if nfe == 5 and not path.exists():
                    path.write_bytes(src.read_bytes())
                complete &= distil(f"final/{student}{nfe}", cfg, path)

    # Keep, per student and NFE, whichever of the new and the bundled predictor is closer to the reference.
    selected = args.work / "selected"
    selected.mkdir(exist_ok=True)
    if complete:
        study.setdefault("check", {})
        for path in sorted(final.glob("*.pt")):
            nfe = load_predictor(path, checkpoint_sha256=sha).sampler.nfe
            shipped = assets.HERE / path.name
            files = {"new": path}
            if shipped.exists() and load_predictor(shipped, allow_mismatch=True).checkpoint_sha256 == sha:
                files["shipped"] = shipped
            if path.stem not in study["check"]:
                study["check"][path.stem] = rmse_of(files, ("ipndm",), nfe)
                _save_json(state_path, study)
            check = study["check"][path.stem]
            best = min(files, key=lambda k: check[k])
            (selected / path.name).write_bytes(files[best].read_bytes())
            print(f"{path.stem}: " + ", ".join(f"{k} {v:.4f}" for k, v in check.items()) + f" -> {best}", flush=True)
    study["complete"] = complete
    _save_json(state_path, study)
    _save_json(args.out / "study.json", study)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(selected.glob("*.pt")):
            tar.add(path, arcname=path.name)
    atomic_write_bytes(args.out / "predictors.tar", buf.getvalue())
    print("complete" if complete else "incomplete: run again with the same arguments", flush=True)


if __name__ == "__main__":
    main()
