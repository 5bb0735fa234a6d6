"""Failing loudly and safely: fuzzed metadata, killed writers, many samplers, bad files on the CLI."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.metadata import GraphSpec, spec_from_metadata_props
from amed_deploy.runtime import Sampler

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps)))
def test_metadata_parser_only_ever_raises_its_own_error(text):
    try:
        GraphSpec.from_json(text)
    except AmedError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(
        [
            "kind",
            "precision",
            "image_shape",
            "label_dim",
            "batch_min",
            "batch_max",
            "sampler",
            "afs_rca",
            "format_version",
        ]
    ),
    value=json_values,
)
@example(key="batch_max", value=float("inf"))  # int(inf) raised OverflowError, not AmedError
def test_mutated_valid_metadata_is_validated(amed_onnx, key, value):
    import onnx

    props = {p.key: p.value for p in onnx.load(amed_onnx).metadata_props}
    d = json.loads(props["amed_deploy"])
    d[key] = value
    try:
        spec = spec_from_metadata_props({"amed_deploy": json.dumps(d)})
    except AmedError:
        return
    assert spec.batch_min <= spec.batch_max  # whatever was accepted is consistent


def test_infinite_sampler_numbers_are_refused(amed_onnx):
    import onnx

    from amed_deploy.config import SamplerConfig

    props = {p.key: p.value for p in onnx.load(amed_onnx).metadata_props}
    d = json.loads(props["amed_deploy"])
    d["sampler"]["nfe"] = float("inf")
    with pytest.raises(AmedError, match="malformed"):
        SamplerConfig.from_dict(d["sampler"])
    with pytest.raises(AmedError, match="malformed"):
        spec_from_metadata_props({"amed_deploy": json.dumps(d)})


def test_writer_killed_mid_write_leaves_nothing(tmp_path):
    """SIGKILL a process while it writes a large file atomically: the target never appears half-written."""
    target = tmp_path / "big.bin"
    code = (
        "import sys, time\n"
        "from amed_deploy.files import atomic_open\n"
        "with atomic_open(sys.argv[1]) as f:\n"
        "    for _ in range(10_000):\n"
        "        f.write(b'x' * 65536); f.flush(); time.sleep(0.001)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
    deadline = time.time() + 20
    while time.time() < deadline and not any(p.name.startswith(".big.bin.") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_destination_fails_cleanly(tmp_path, monkeypatch, err):
    """A disk that fills up (write fails) or a read-only destination (rename fails): an OSError
    reaches the caller, the old file is intact and no temp file is left behind."""
    from amed_deploy import files

    target = tmp_path / "samples.png"
    target.write_bytes(b"old")
    if err == errno.ENOSPC:
        monkeypatch.setattr(files, "open", _failing_open(err), raising=False)
    else:
        monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(err, os.strerror(err))))
    with pytest.raises(OSError):
        files.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]


def _failing_open(err):
    real = open

    class _Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(err, os.strerror(err))

    return lambda path, mode="r", *a, **k: _Full(real(path, mode, *a, **k))


def test_eight_samplers_in_one_process_match_single_runs(amed_onnx):
    expected = {seed: Sampler.load(amed_onnx, batch=2, device="cpu").sample(seed=seed).images for seed in range(8)}
    samplers = [Sampler.load(amed_onnx, batch=2, device="cpu") for _ in range(8)]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        results[i] = samplers[i].sample(seed=i).images

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in range(8):
        assert torch.equal(results[seed], expected[seed])


def _fail_next_run(smp: Sampler, error: Exception) -> None:
    """Make the executor's next run raise `error` once (a fault injected mid-loop)."""
    real = smp.executor.run
    state = {"armed": True}

    def run() -> None:
        if state["armed"]:
            state["armed"] = False
            raise error
        real()

    smp.executor.run = run


def test_an_executor_exception_leaves_the_sampler_usable(amed_onnx):
    smp = Sampler.load(amed_onnx, batch=2, device="cpu")
    want = smp.sample(seed=3).images
    _fail_next_run(smp, ValueError("backend hiccup"))
    with pytest.raises(ValueError, match="hiccup"):
        smp.sample(seed=3)
    assert torch.equal(smp.sample(seed=3).images, want)  # the next call works and is unaffected


def test_a_device_fault_makes_the_sampler_refuse_and_say_rebuild(amed_onnx):
    smp = Sampler.load(amed_onnx, batch=2, device="cpu")
    _fail_next_run(smp, RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(AmedError, match="device failed.*rebuild it"):
        smp.sample(seed=3)
    with pytest.raises(AmedError, match="unusable after an earlier failure.*illegal memory access"):
        smp.sample(seed=3)  # refuses at once instead of running on suspect buffers
    fresh = Sampler.load(amed_onnx, batch=2, device="cpu")
    assert torch.isfinite(fresh.sample(seed=3).images).all()


def test_out_of_memory_is_reported_and_recoverable(amed_onnx):
    smp = Sampler.load(amed_onnx, batch=2, device="cpu")
    want = smp.sample(seed=1).images
    _fail_next_run(smp, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(AmedError, match="out of GPU memory while sampling a batch of 2"):
        smp.sample(seed=1)
    assert torch.equal(smp.sample(seed=1).images, want)


def test_compile_is_refused_for_exported_graphs(amed_onnx):
    with pytest.raises(AmedError, match="compile applies to the PyTorch executor"):
        Sampler.load(amed_onnx, batch=2, device="cpu", compile=True)


def test_provider_options_are_refused_where_they_cannot_apply(amed_onnx, tiny_ckpt):
    with pytest.raises(AmedError, match="apply to ONNX Runtime"):
        Sampler.load(tiny_ckpt, batch=2, device="cpu", solver="euler", nfe=2, provider_options={"use_tf32": "1"})
    with pytest.raises(AmedError, match="CUDA provider; this session runs on the CPU"):
        Sampler.load(amed_onnx, batch=2, device="cpu", provider_options={"use_tf32": "1"})


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pkl", ".onnx", ".plan"])
@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"garbage" * 10])
def test_cli_bad_files_give_one_line(tmp_path, suffix, content):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    out = tmp_path / "out.png"
    if suffix in (".onnx", ".plan"):
        args = ["run", "--engine", str(bad), "--out", str(out), "--device", "cpu", "--batch", "1"]
    else:
        args = ["info", str(bad)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output
    assert not out.exists()


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, tmp_path):
    import amed_deploy.checkpoint.load as checkpoint

    def boom(*a, **k):
        raise RuntimeError("simulated bug\nwith a second line")

    monkeypatch.setattr(checkpoint, "load_checkpoint", boom)
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"x")
    res = CliRunner().invoke(main, ["info", str(ckpt)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "error: internal error (RuntimeError: simulated bug with a second line); rerun with --debug for the traceback"
    ]
    res = CliRunner().invoke(main, ["--debug", "info", str(ckpt)])
    assert isinstance(res.exception, RuntimeError)
