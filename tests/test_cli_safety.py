"""The CLI under hostile input: nothing a user owns is destroyed, and every bad input is one `error:`
line with exit code 2 (no traceback, no "internal error", no output file, every pre-existing file
byte-identical). One list of cases per class; docs/RELIABILITY.md counts them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_KWARGS, tiny_net

from amed_deploy.checkpoint.format import Checkpoint, save_checkpoint
from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.runtime import Sampler

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


@dataclass
class Case:
    """argv with {placeholders} filled from the work folder's files; `match` must be in the error line."""

    args: list[str]
    match: str
    setup: list[str] = field(default_factory=list)  # first: 'name=<text>', or 'name>input' (a hard link to a copy)

    def __str__(self) -> str:
        return " ".join(self.args)[:60]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_ckpt, distilled, amed_onnx) -> dict[str, Path]:
    """Every input a case may name: the tiny model, its predictor and graph, and damaged models."""
    folder = tmp_path_factory.mktemp("sources")
    files = {"edm.pt": tiny_ckpt, "amed5.pt": distilled[3], "g.onnx": amed_onnx}
    net = tiny_net()
    nan_sd = {k: v.clone() for k, v in net.state_dict().items()}
    first = next(k for k, v in nan_sd.items() if v.is_floating_point() and v.ndim >= 2)
    nan_sd[first][0].fill_(float("nan"))
    save_checkpoint(Checkpoint("EDMPrecond", dict(TINY_KWARGS), nan_sd, {}), folder / "nan.pt")
    # finite weights whose outputs overflow float32: the non-finite check must be on the outputs too
    big_sd = {k: (v * 1e30 if v.is_floating_point() and v.ndim >= 2 else v) for k, v in net.state_dict().items()}
    save_checkpoint(Checkpoint("EDMPrecond", dict(TINY_KWARGS), big_sd, {}), folder / "overflow.pt")
    save_checkpoint(Checkpoint("EDMPrecond", {**TINY_KWARGS, "label_dim": -3}, net.state_dict(), {}), folder / "neg.pt")
    save_checkpoint(
        Checkpoint("EDMPrecond", {**TINY_KWARGS, "model_channels": 100000}, net.state_dict(), {}), folder / "wide.pt"
    )
    for name, path in files.items():
        shutil.copy(path, folder / name)
    _edit_metadata(folder / "g.onnx", folder / "huge-batch.onnx", batch_max=10**9)
    _edit_metadata(folder / "g.onnx", folder / "big-sigma.onnx", sampler={"sigma_max": 1e300})
    _edit_metadata(folder / "g.onnx", folder / "deep.onnx", raw="[" * 100_000 + "]" * 100_000)
    manifest = "[" * 100_000 + "]" * 100_000
    (folder / "deep.plan").write_bytes(b"plan")
    (folder / "deep.plan.json").write_text(manifest)
    return {p.name: p for p in folder.iterdir()}


def _edit_metadata(src: Path, dst: Path, raw: str | None = None, sampler: dict | None = None, **fields) -> None:
    model = onnx.load(src)
    prop = next(p for p in model.metadata_props if p.key == "amed_deploy")
    record = json.loads(prop.value)
    record.update(fields)
    record["sampler"].update(sampler or {})
    prop.value = raw if raw is not None else json.dumps(record)
    onnx.save(model, dst)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _prepare(case: Case, folder: Path, sources: dict[str, Path]) -> None:
    """Create the case's own files, then make every shared input reachable by name (symlinks)."""
    for item in case.setup:
        if "=" in item:
            name, _, text = item.partition("=")
            (folder / name).write_text(text)
        else:
            name, _, src = item.partition(">")
            if not (folder / src).exists():
                shutil.copy(sources[src], folder / src)
            os.link(folder / src, folder / name)
    for name, path in sources.items():
        if not (folder / name).exists():
            os.symlink(path, folder / name)


@contextlib.contextmanager
def working_dir(folder: Path):
    """chdir for the block (contextlib.chdir needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _invoke(case: Case, folder: Path, sources: dict[str, Path]):
    """Run the case's command in `folder` (also its working directory: default outputs such as
    samples.png land there, whatever the directory pytest runs from holds)."""
    _prepare(case, folder, sources)
    with working_dir(folder):
        return CliRunner().invoke(main, [a.format(d=folder) for a in case.args])


def _assert_refused(case: Case, tmp_path: Path, sources: dict[str, Path]) -> None:
    _prepare(case, tmp_path, sources)
    before, shared = _snapshot(tmp_path), {p: p.read_bytes() for p in sources.values()}
    with working_dir(tmp_path):
        res = CliRunner().invoke(main, [a.format(d=tmp_path) for a in case.args])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    assert case.match in lines[0], lines[0]
    assert _snapshot(tmp_path) == before, "a file was written or changed"
    assert {p: p.read_bytes() for p in sources.values()} == shared


# ---------------------------------------------------------------- data loss: never over an input or an existing file

RUN = ["run", "--device", "cpu", "--batch", "2"]
DATA_LOSS = [
    Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/g.onnx"], "--out"),  # suffix refuses a graph name
    Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/g.png", "--force"], "input of this command", ["g.png>g.onnx"]),
    Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.png"], "already exists", ["s.png=mine"]),
    Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.png", "--npz", "{d}/s.npz"], "already exists", ["s.npz=x"]),
    Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.png", "--npz", "{d}/s.png"], "--npz"),
    Case(
        ["sample", "--ckpt", "{d}/edm.pt", "--solver", "euler", "--nfe", "2", "--out", "{d}/link.png", "--force"],
        "input of this command",
        ["link.png>edm.pt"],
    ),
    Case(
        ["sample", "--ckpt", "{d}/edm.pt", "--predictor", "{d}/amed5.pt", "--out", "{d}/amed5.pt", "--force"],
        "--out",
    ),
    Case(
        ["export", "--ckpt", "{d}/edm.pt", "--out", "{d}/e.onnx", "--force"], "input of this command", ["e.onnx>edm.pt"]
    ),
    Case(["export", "--ckpt", "{d}/edm.pt", "--out", "{d}/g2.onnx"], "already exists", ["g2.onnx=old"]),
    Case(["convert", "{d}/edm.pt", "--out", "{d}/edm.pt", "--force"], "input of this command"),
    Case(["convert", "{d}/edm.pt", "--out", "{d}/x.pt"], "already exists", ["x.pt=old"]),
    Case(["distill", "--ckpt", "{d}/edm.pt", "--out", "{d}/edm.pt", "--force"], "input of this command"),
    Case(["distill", "--ckpt", "{d}/edm.pt", "--out", "{d}/amed5.pt"], "already exists"),
    Case(["build", "--onnx", "{d}/g.onnx", "--out", "{d}/p.plan"], "already exists", ["p.plan=old"]),
    Case(["build", "--onnx", "{d}/g.onnx", "--out", "{d}/p.plan"], "already exists", ["p.plan.json={}"]),
    Case(["demo", "--out", "{d}/s.png"], "already exists", ["s.png=mine"]),
    Case(["eval", "--ckpt", "{d}/edm.pt", "--no-fid", "--out", "{d}/r.json"], "already exists", ["r.json={}"]),
]


@pytest.mark.parametrize("case", DATA_LOSS, ids=str)
def test_data_loss_is_refused(case, tmp_path, sources):
    _assert_refused(case, tmp_path, sources)


def test_hard_link_and_symlink_to_an_input_are_the_input(tmp_path, sources):
    """`--out` that reaches an input through a link is that input, even with --force."""
    shutil.copy(sources["g.onnx"], tmp_path / "own.onnx")
    os.link(tmp_path / "own.onnx", tmp_path / "hard.png")
    os.symlink(tmp_path / "own.onnx", tmp_path / "soft.png")
    for out in ("hard.png", "soft.png"):
        case = Case([*RUN, "--engine", "{d}/own.onnx", "--out", "{d}/" + out, "--force"], "input of this command")
        _assert_refused(case, tmp_path, sources)


def test_write_protected_output_is_kept_even_with_force(tmp_path, sources):
    target = tmp_path / "s.png"
    target.write_bytes(b"precious")
    target.chmod(0o444)
    case = Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.png", "--force"], "write-protected")
    _assert_refused(case, tmp_path, sources)


def test_force_replaces_an_existing_output(tmp_path, sources):
    """The positive control: --force does replace an output that is no input."""
    (tmp_path / "s.png").write_bytes(b"old")
    res = _invoke(Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.png", "--force"], ""), tmp_path, sources)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- non-finite outputs are an error on every path

NON_FINITE = [
    Case(["sample", "--ckpt", "{d}/nan.pt", "--solver", "euler", "--nfe", "2", "--out", "{d}/s.png"], "non-finite"),
    Case(["export", "--ckpt", "{d}/nan.pt", "--out", "{d}/n.onnx"], "non-finite"),
    Case([*RUN, "--engine", "{d}/nan.pt", "--solver", "euler", "--nfe", "2", "--out", "{d}/s.png"], "non-finite"),
    Case(["distill", "--ckpt", "{d}/nan.pt", "--out", "{d}/p.pt", "--kimg", "0.002", "--batch", "2"], "non-finite"),
    Case(["sample", "--ckpt", "{d}/overflow.pt", "--solver", "euler", "--nfe", "2", "--out", "{d}/s.png"], "NaN/inf"),
    Case(["export", "--ckpt", "{d}/overflow.pt", "--out", "{d}/o.onnx"], "NaN/inf"),
    Case([*RUN, "--engine", "{d}/overflow.pt", "--solver", "euler", "--nfe", "2", "--out", "{d}/s.png"], "NaN/inf"),
]


@pytest.mark.parametrize("case", NON_FINITE, ids=str)
def test_non_finite_results_are_refused(case, tmp_path, sources):
    _assert_refused(case, tmp_path, sources)


# ---------------------------------------------------------------- resource bounds, checked before allocating

BOUNDS = [
    Case([*RUN[:3], "--engine", "{d}/edm.pt", "--solver", "euler", "--nfe", "2", "--batch", "1000000"], "needs about"),
    Case([*RUN[:3], "--engine", "{d}/huge-batch.onnx", "--batch", "1000000"], "needs about"),
    Case(["sample", "--ckpt", "{d}/edm.pt", "--solver", "euler", "--nfe", "2", "--batch", "1000000"], "needs about"),
    Case(["sample", "--ckpt", "{d}/edm.pt", "--solver", "euler", "--nfe", "1000000"], "--nfe"),
    Case(["distill", "--ckpt", "{d}/edm.pt", "--nfe", "1000000"], "--nfe"),
    Case(["sample", "--ckpt", "{d}/wide.pt", "--solver", "euler", "--nfe", "2"], "do not match"),
]


@pytest.mark.parametrize("case", BOUNDS, ids=str)
def test_resource_bounds(case, tmp_path, sources):
    _assert_refused(case, tmp_path, sources)


# ---------------------------------------------------------------- bad values are bad input, not internal errors

SAMPLE = ["sample", "--ckpt", "{d}/edm.pt", "--solver", "euler", "--nfe", "2", "--out", "{d}/s.png"]
DISTILL = ["distill", "--ckpt", "{d}/edm.pt", "--out", "{d}/p.pt"]
BAD_VALUES = [
    Case([*SAMPLE, "--device", "bogus"], "device"),
    Case([*SAMPLE, "--device", "cuda:x"], "device"),
    Case([*SAMPLE, "--seed", str(2**64)], "--seed"),
    Case([*SAMPLE, "--seed", "-1"], "--seed"),
    Case([*SAMPLE, "--class", str(2**70)], "out of range"),
    Case([*SAMPLE, "--class", "1.5"], "--class"),
    Case([*DISTILL, "--batch", "0"], "--batch"),
    Case([*DISTILL, "--lr", "nan"], "--lr"),
    Case([*DISTILL, "--lr", "inf"], "--lr"),
    Case([*DISTILL, "--kimg", "0"], "--kimg"),
    Case([*DISTILL, "--kimg", "-1"], "--kimg"),
    Case([*DISTILL, "--scale-dir", "-0.1"], "--scale-dir"),
    Case([*DISTILL, "--scale-dir", "1.5"], "scale_dir"),
    Case([*DISTILL, "--teacher", "amed"], "teacher"),
    Case([*RUN, "--engine", "{d}/big-sigma.onnx", "--out", "{d}/s.png"], "sigma_max"),
    Case([*RUN, "--engine", "{d}/deep.onnx", "--out", "{d}/s.png"], "nested too deeply"),
    Case(["info", "{d}/deep.plan"], "nested too deeply"),
    Case(["info", "{d}/deep.onnx"], "nested too deeply"),
    Case(["sample", "--ckpt", "{d}/neg.pt", "--solver", "euler", "--nfe", "2"], "label_dim"),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=str)
def test_bad_values_are_one_error_line(case, tmp_path, sources):
    _assert_refused(case, tmp_path, sources)


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_bad_input(device, tmp_path, sources):
    _assert_refused(Case([*SAMPLE, "--device", device], "no usable CUDA GPU"), tmp_path, sources)


# ---------------------------------------------------------------- options that do not apply are refused, not ignored

NOT_APPLICABLE = [
    Case([*RUN, "--engine", "{d}/g.onnx", "--predictor", "{d}/amed5.pt", "--out", "{d}/s.png"], "predictor"),
    Case([*RUN, "--engine", "{d}/g.onnx", "--ignore-checkpoint-mismatch", "--out", "{d}/s.png"], "mismatch"),
    Case([*RUN, "--engine", "{d}/g.onnx", "--cuda-graph", "--out", "{d}/s.png"], "CPU"),
    Case([*RUN, "--engine", "{d}/edm.pt", "--ignore-checkpoint-mismatch", "--out", "{d}/s.png"], "--predictor"),
    Case([*RUN[:3], "--engine", "{d}/edm.pt", "--batch", "0", "--out", "{d}/s.png"], "--batch"),
    Case(["export", "--ckpt", "{d}/edm.pt", "--fixed-batch", "--max-batch", "8", "--out", "{d}/x.onnx"], "--fixed"),
    Case(["export", "--ckpt", "{d}/edm.pt", "--batch", "99", "--out", "{d}/x.onnx"], "--max-batch"),
    Case(["export", "--ckpt", "{d}/edm.pt", "--ignore-checkpoint-mismatch", "--out", "{d}/x.onnx"], "--predictor"),
    Case(["sample", "--ckpt", "{d}/edm.pt", "--predictor", "{d}/amed5.pt", "--schedule", "logsnr"], "--schedule"),
    Case(["sample", "--ckpt", "{d}/edm.pt", "--predictor", "{d}/amed5.pt", "--afs"], "--afs"),
    Case(["sample", "--ckpt", "{d}/edm.pt", "--predictor", "{d}/amed5.pt", "--solver", "euler"], "not both"),
]


@pytest.mark.parametrize("case", NOT_APPLICABLE, ids=str)
def test_options_that_do_not_apply_are_refused(case, tmp_path, sources):
    _assert_refused(case, tmp_path, sources)


# ---------------------------------------------------------------- a solver's formula and options are what was asked

RUN_TO = [*RUN, "--out", "{d}/s.png"]
SAMPLE_TO = ["sample", "--ckpt", "{d}/edm.pt", "--out", "{d}/s.png"]
SOLVER_REFUSALS = [
    Case([*RUN_TO, "--engine", "{d}/g.onnx", "--solver", "amed_ipndm"], "not amed_ipndm: the formulas"),
    Case([*RUN_TO, "--engine", "{d}/g.onnx", "--solver", "amed_dpm2"], "(AMED-Solver), not amed_dpm2"),
    Case([*RUN_TO, "--engine", "{d}/g.onnx", "--max-order", "2"], "pass solver too"),
    Case(
        [*RUN_TO, "--engine", "{d}/g.onnx", "--solver", "amed", "--thresholding"], "amed takes no thresholding option"
    ),
    Case(
        [*RUN_TO, "--engine", "{d}/g.onnx", "--solver", "heun", "--nfe", "6", "--max-order", "2"],
        "heun takes no max_order",
    ),
    Case(
        [*RUN_TO, "--engine", "{d}/edm.pt", "--solver", "euler", "--nfe", "2", "--predict-noise"], "takes no predict_x0"
    ),
    Case(
        [*RUN_TO, "--engine", "{d}/edm.pt", "--solver", "dpmpp2m", "--nfe", "4", "--max-order", "3"],
        "integer 1..2, got 3",
    ),
    Case([*RUN_TO, "--engine", "{d}/edm.pt", "--solver", "dpmpp2m", "--nfe", "4", "--max-order", "x"], "--max-order"),
    Case(
        [*RUN_TO, "--engine", "{d}/edm.pt", "--solver", "dpmpp2m", "--nfe", "4", "--predict-noise", "--thresholding"],
        "thresholding applies to data prediction",
    ),
    Case(
        [*RUN_TO, "--engine", "{d}/edm.pt", "--predictor", "{d}/amed5.pt", "--solver", "amed_ipndm_uneven"],
        "distilled for amed (AMED-Solver), not amed_ipndm_uneven",
    ),
    Case(
        [*RUN_TO, "--engine", "{d}/edm.pt", "--solver", "amed_euler", "--nfe", "3"],
        "needs a predictor distilled for it",
    ),
    Case(
        [*RUN_TO, "--engine", "{d}/edm.pt", "--solver", "bogus", "--nfe", "2"], "unknown solver 'bogus'; choose one of"
    ),
    Case([*SAMPLE, "--max-order", "2"], "euler takes no max_order option (it applies to ipndm"),
    Case(
        [*SAMPLE_TO, "--predictor", "{d}/amed5.pt", "--solver", "amed_ipndm"],
        "this predictor was distilled for amed (AMED-Solver), not amed_ipndm: the formulas differ; distil one",
    ),
    Case([*SAMPLE_TO, "--predictor", "{d}/amed5.pt", "--no-lower-order-final"], "takes no lower"),
    Case([*SAMPLE_TO, "--solver", "amed_euler", "--nfe", "3"], "--student amed_euler"),
]


@pytest.mark.parametrize("case", SOLVER_REFUSALS, ids=str)
def test_another_formula_or_an_option_the_solver_lacks_is_refused(case, tmp_path, sources):
    _assert_refused(case, tmp_path, sources)


def test_solver_options_reach_run_and_sample(tmp_path, sources):
    """--predict-noise changes DPM-Solver++(3M)'s formula, the same way on the deployed loop and the reference."""
    solver = ["--solver", "dpmpp3m", "--nfe", "5", "--class", "0", "--seed", "3"]
    raw = {}
    for name, args in {
        "run": [*RUN, "--engine", "{d}/edm.pt", *solver, "--predict-noise"],
        "sample": ["sample", "--ckpt", "{d}/edm.pt", "--batch", "2", "--device", "cpu", *solver, "--predict-noise"],
        "default": [*RUN, "--engine", "{d}/edm.pt", *solver],
    }.items():
        out = ["--out", f"{{d}}/{name}.png", "--npz", f"{{d}}/{name}.npz"]
        res = _invoke(Case([*args, *out], ""), tmp_path, sources)
        assert res.exit_code == 0, res.output
        raw[name] = np.load(tmp_path / f"{name}.npz")["raw"]
    assert np.abs(raw["run"] - raw["sample"]).max() < 1e-4
    assert np.abs(raw["run"] - raw["default"]).max() > 1e-3


# ---------------------------------------------------------------- a file is what its name says

BAD_NAMES = [
    Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.bmp"], ".png"),
    Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.png", "--npz", "{d}/s.txt"], ".npz"),
    Case(["convert", "{d}/edm.pt", "--out", "{d}/x.bin"], ".safetensors"),
    Case(["export", "--ckpt", "{d}/edm.pt", "--out", "{d}/g.plan"], ".onnx"),
    Case(["build", "--onnx", "{d}/g.onnx", "--out", "{d}/g2.onnx"], ".plan"),
    Case(["distill", "--ckpt", "{d}/edm.pt", "--out", "{d}/p.safetensors"], ".pt"),
]


@pytest.mark.parametrize("case", BAD_NAMES, ids=str)
def test_names_that_promise_another_format_are_refused(case, tmp_path, sources):
    _assert_refused(case, tmp_path, sources)


def test_jpeg_and_upper_case_names_write_the_named_format(tmp_path, sources):
    res = _invoke(Case([*RUN, "--engine", "{d}/g.onnx", "--out", "{d}/s.JPG"], ""), tmp_path, sources)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.JPG").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    res = _invoke(Case(["convert", "{d}/edm.pt", "--out", "{d}/m.SAFETENSORS"], ""), tmp_path, sources)
    assert res.exit_code == 0, res.output
    head = (tmp_path / "m.SAFETENSORS").read_bytes()[:9]
    assert head[8:9] == b"{" and not head.startswith(b"PK")  # a safetensors header, not a torch zip


# ---------------------------------------------------------------- the Python API: strict seeds and labels


@pytest.fixture(scope="module")
def api_sampler(amed_onnx) -> Sampler:
    return Sampler.load(amed_onnx, batch=2, device="cpu")


@pytest.mark.parametrize("seed", [1.5, 2.0, "3", True, -1, 2**64, torch.tensor(1.0), np.float64(1)])
def test_api_refuses_non_integer_or_out_of_range_seeds(api_sampler, seed):
    with pytest.raises(AmedError, match="seed"):
        api_sampler.sample(seed=seed)
    with pytest.raises(AmedError, match="seed"):
        api_sampler.sample(seeds=[0, seed])


@pytest.mark.parametrize("classes", [1.0, [0, 1.5], "01", True, [True, False], np.array([0.0, 1.0]), [0, 2**70]])
def test_api_refuses_non_integer_class_labels(api_sampler, classes):
    with pytest.raises(AmedError, match="class"):
        api_sampler.sample(seed=0, classes=classes)


def test_api_accepts_numpy_and_torch_integers(api_sampler):
    want = api_sampler.sample(seed=3, classes=[1, 2]).images
    for seed, classes in [
        (np.int64(3), np.array([1, 2])),
        (torch.tensor(3), torch.tensor([1, 2])),
        (np.uint8(3), [np.int32(1), torch.tensor(2)]),
    ]:
        assert torch.equal(api_sampler.sample(seed=seed, classes=classes).images, want)
    one = api_sampler.sample(seed=3, classes=np.int16(2)).labels
    assert one.argmax(1).tolist() == [2, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"device": "bogus"}, "unknown device"),
        ({"device": "mps"}, "not supported"),
        ({"predictor": "amed5.pt"}, "predictor"),
        ({"precision": "fp16"}, "precision"),
        ({"ignore_checkpoint_mismatch": True}, "mismatch"),
        ({"cuda_graph": True, "device": "cpu"}, "CPU"),
        ({"schedule": "logsnr"}, "schedule"),
        ({"batch": 0}, "batch"),
        ({"batch": 2.5}, "batch"),
    ],
)
def test_api_refuses_options_that_do_not_apply(amed_onnx, kwargs, match):
    with pytest.raises(AmedError, match=match):
        Sampler.load(amed_onnx, **{"device": "cpu", **kwargs})


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("g.plan", {"predictor": "amed5.pt"}, r"predictor \(--predictor\) applies to the PyTorch executor"),
        ("g.plan", {"precision": "fp16"}, "precision applies to the PyTorch executor.*not applicable to a TensorRT"),
        ("g.plan", {"ignore_checkpoint_mismatch": True}, "mismatch.*applies to the PyTorch executor"),
        ("g.plan", {"compile": True}, "compile applies to the PyTorch executor.*not applicable to a TensorRT"),
        ("g.plan", {"provider_options": {}}, "provider_options apply to ONNX Runtime.*not applicable to a TensorRT"),
        ("edm.pt", {"provider_options": {}}, "provider_options apply to ONNX Runtime.*not applicable to a checkpoint"),
        ("edm.pt", {"ignore_checkpoint_mismatch": True}, r"mismatch.*applies to predictor \(--predictor\)"),
        ("edm.pt", {"afs": False}, "afs applies to solver"),
    ],
)
def test_api_refuses_options_of_another_backend_before_reading_the_file(tmp_path, name, kwargs, match):
    """The option is refused, naming the backend it applies to, before the file is even opened."""
    path = tmp_path / name
    path.write_bytes(b"not a model: never read")
    with pytest.raises(AmedError, match=match):
        Sampler.load(path, device="cpu", **kwargs)


@NO_CUDA
def test_api_cuda_without_a_gpu_is_an_amed_error(amed_onnx):
    with pytest.raises(AmedError, match="no usable CUDA GPU"):
        Sampler.load(amed_onnx, device="cuda")
