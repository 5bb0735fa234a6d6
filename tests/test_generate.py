"""`amed-deploy generate`: one PNG per seed in EDM's layout (or .npz shards), each image the one the
Sampler draws for that seed, resumable, a folder kept to one run, and `torchrun` processes (gloo on
CPUs) whose union is the single-process output image for image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.generate import generate, png_path
from amed_deploy.images import to_uint8
from amed_deploy.runtime import Sampler


def _generate(tiny_ckpt, pred, out, *extra: str):
    args = ["generate", "--engine", str(tiny_ckpt), "--predictor", str(pred), "--out", str(out), "--device", "cpu"]
    return CliRunner().invoke(main, [*args, "--no-progress", *extra])


def _npz_images(folder) -> dict[int, np.ndarray]:
    images = {}
    for shard in sorted(folder.glob("shard-*.npz")):
        with np.load(shard) as arrays:
            images.update({int(s): img for s, img in zip(arrays["seeds"], arrays["images"], strict=True)})
    return images


def test_png_per_seed_in_edms_layout_and_resumed(tmp_path, tiny_ckpt, distilled):
    pred, out = distilled[3], tmp_path / "imgs"
    res = _generate(tiny_ckpt, pred, out, "--seeds", "998-1001", "--batch", "3")
    assert res.exit_code == 0, res.output
    assert "generated 4 images" in res.output and "(0 already there)" in res.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["000000/000998.png", "000000/000999.png", "001000/001000.png", "001000/001001.png"]
    ref = to_uint8(
        Sampler.load(tiny_ckpt, predictor=pred, batch=4, device="cpu").sample(seeds=[998, 999, 1000, 1001]).images
    )
    for i, name in enumerate(files):
        png = np.asarray(Image.open(out / name))
        assert np.array_equal(png, ref[i, ..., 0])
    before = {name: (out / name).stat().st_mtime_ns for name in files}
    res = _generate(tiny_ckpt, pred, out, "--seeds", "996-1001", "--batch", "3")
    assert res.exit_code == 0, res.output
    assert "generated 2 images" in res.output and "(4 already there)" in res.output
    assert {name: (out / name).stat().st_mtime_ns for name in files} == before  # written once, never again
    assert (out / "000000" / "000996.png").is_file() and json.loads((out / "generate.json").read_text())[
        "format"
    ] == "png"


def test_a_folder_holds_one_runs_images(tmp_path, tiny_ckpt, distilled):
    pred, out = distilled[3], tmp_path / "imgs"
    assert _generate(tiny_ckpt, pred, out, "--seeds", "0-1").exit_code == 0
    res = _generate(tiny_ckpt, pred, out, "--seeds", "0-3", "--class", "1")
    assert res.exit_code == 2 and "holds images of another run (class differ)" in res.output
    res = _generate(tiny_ckpt, pred, tmp_path / "other", "--seeds", "0-1", "--class", "3")
    assert res.exit_code == 2 and "class label 3 is out of range" in res.output
    assert not (tmp_path / "other").exists()  # refused before anything was written
    (tmp_path / "file").write_text("x")
    res = _generate(tiny_ckpt, pred, tmp_path / "file", "--seeds", "0-1")
    assert res.exit_code == 2 and "is a file" in res.output


def test_npz_shards_hold_the_same_images_as_pngs(tmp_path, tiny_ckpt, distilled):
    pred = distilled[3]
    assert _generate(tiny_ckpt, pred, tmp_path / "png", "--seeds", "0-4", "--batch", "2").exit_code == 0
    res = _generate(tiny_ckpt, pred, tmp_path / "npz", "--seeds", "0-4", "--batch", "2", "--format", "npz")
    assert res.exit_code == 0, res.output
    shards = sorted(p.name for p in (tmp_path / "npz").glob("*.npz"))
    assert shards == ["shard-000000.npz", "shard-000002.npz", "shard-000004.npz"]
    images = _npz_images(tmp_path / "npz")
    assert sorted(images) == [0, 1, 2, 3, 4]
    for seed, img in images.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / "000000" / f"{seed:06d}.png")), img[..., 0])
    with np.load(tmp_path / "npz" / "shard-000000.npz") as arrays:
        assert arrays["labels"].shape == (2,) and arrays["images"].dtype == np.uint8
    res = _generate(tiny_ckpt, pred, tmp_path / "npz", "--seeds", "0-5", "--batch", "2", "--format", "npz")
    assert "generated 1 images" in res.output and "(5 already there)" in res.output
    (tmp_path / "npz" / "shard-000009.npz").write_bytes(b"not a zip")
    res = _generate(tiny_ckpt, pred, tmp_path / "npz", "--seeds", "0-6", "--batch", "2", "--format", "npz")
    assert res.exit_code == 2 and "shard-000009.npz is not a readable shard" in res.output


def _pngs(out) -> list[int]:
    return sorted(int(p.stem) for p in out.rglob("*.png") if p.is_file())


def test_a_failure_keeps_the_images_written_before_it(tmp_path, tiny_ckpt, distilled):
    """Files are written while the next call samples: a failed call still leaves the call before it
    written, and a failed write stops the run with its error."""
    smp = Sampler.load(tiny_ckpt, predictor=distilled[3], batch=2, device="cpu")
    real, calls = smp.sample, []

    def fails_third(**kwargs):
        calls.append(kwargs["seeds"])
        if len(calls) == 3:
            raise AmedError("device lost")
        return real(**kwargs)

    smp.sample = fails_third
    with pytest.raises(AmedError, match="device lost"):
        generate(smp, range(8), tmp_path / "a", "png", progress=False)
    assert _pngs(tmp_path / "a") == [0, 1, 2, 3]

    smp.sample = real
    png_path(tmp_path / "b", 2).mkdir(parents=True)  # seed 2's file cannot be written
    with pytest.raises(AmedError, match="000002.png is a directory"):
        generate(smp, range(6), tmp_path / "b", "png", progress=False)
    assert _pngs(tmp_path / "b") == [0, 1]  # seeds 4-5 were sampled, but the run stopped at the failure


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo launch")
def test_torchrun_processes_share_the_seeds_and_equal_one_process(tmp_path):
    """The bundled model: two gloo ranks on the CPU at batch 2 against one process at batch 3, the same
    images per seed, bit for bit."""
    model = ["--engine", "fashion-mnist", "--predictor", "amed5", "--seeds", "0-6", "--format", "npz"]
    res = CliRunner().invoke(
        main, ["generate", *model, "--out", str(tmp_path / "one"), "--batch", "3", "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "amed_deploy.cli", "generate", *model, "--out", str(tmp_path / "two"), "--batch", "2"]
    cmd += ["--device", "cpu", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generated 7 images" in done.stdout and "on 2 processes" in done.stdout
    one, two = _npz_images(tmp_path / "one"), _npz_images(tmp_path / "two")
    assert sorted(two) == sorted(one) == list(range(7))
    # rank 0 took seeds 0, 2, 4, 6 and rank 1 seeds 1, 3, 5: two shards each
    firsts = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "two").glob("shard-*.npz"))
    assert firsts == [0, 1, 4, 5]
    for seed in one:
        assert np.array_equal(one[seed], two[seed])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generate_on_the_gpu_draws_the_cpus_images(tmp_path, tiny_ckpt, distilled):
    pred = distilled[3]
    for device in ("cpu", "cuda"):
        args = ["--seeds", "0-9", "--batch", "4", "--format", "npz"]
        res = CliRunner().invoke(
            main,
            ["generate", "--engine", str(tiny_ckpt), "--predictor", str(pred), "--out", str(tmp_path / device)]
            + args + ["--device", device, "--no-progress"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    cpu, cuda = _npz_images(tmp_path / "cpu"), _npz_images(tmp_path / "cuda")
    assert sorted(cpu) == sorted(cuda) == list(range(10))
    for seed in cpu:  # the same noise and labels; float differences between devices move a level at most
        assert np.abs(cpu[seed].astype(int) - cuda[seed].astype(int)).max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL ranks)")
def test_torchrun_over_gpus_equals_one_gpu(tmp_path, tiny_ckpt, distilled):
    pred = distilled[3]
    common = ["--engine", str(tiny_ckpt), "--predictor", str(pred), "--seeds", "0-15", "--format", "npz"]
    assert _generate_on(tmp_path / "one", common + ["--batch", "8", "--device", "cuda"], nproc=1)
    assert _generate_on(tmp_path / "two", common + ["--batch", "4", "--device", "cuda"], nproc=2)
    one, two = _npz_images(tmp_path / "one"), _npz_images(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(16))
    for seed in one:  # two GPUs of one kind, other batch sizes: a level at most
        assert np.abs(one[seed].astype(int) - two[seed].astype(int)).max() <= 1


def _generate_on(out, args, nproc: int) -> bool:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["-m", "amed_deploy.cli", "generate", "--out", str(out), "--no-progress", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return f"on {nproc} processes" in done.stdout if nproc > 1 else "generated" in done.stdout
