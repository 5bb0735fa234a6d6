"""The amed-deploy checkpoint format, its validation, atomic saving, build_model, and the CLI."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_edm_pickle import TINY_KWARGS, TINY_KWARGS_PLAIN, TinyNet, assert_same_state_dict, same_bits, write_snapshot

from amed_deploy.checkpoint.build import build_model
from amed_deploy.checkpoint.describe import describe_checkpoint
from amed_deploy.checkpoint.format import FORMAT, Checkpoint, save_checkpoint
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.files import file_sha256


def make_ckpt(**kw) -> Checkpoint:
    g = torch.Generator().manual_seed(1)
    sd = {
        "model.map_layer0.weight": torch.randn(8, 4, generator=g),
        "model.map_layer0.bias": torch.randn(8, generator=g),
        "model.enc.conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "model.enc.conv.resample_filter": torch.full((1, 1, 2, 2), 0.25),
        "u": torch.linspace(0.002, 80, 9, dtype=torch.float64),
        "count": torch.tensor(3),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0),
        "tiny": torch.tensor([1e-30, -0.0, float("inf")]),
    }
    fields = dict(
        network_class="EDMPrecond",
        network_kwargs={"img_resolution": 16, "img_channels": 3, "label_dim": 10, "channel_mult": (1, 2)},
        state_dict=sd,
        metadata={"notes": "unit test", "buffer_keys": ["model.enc.conv.resample_filter"]},
    )
    fields.update(kw)
    return Checkpoint(**fields)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", ["edm.pt", "edm.safetensors"])
def test_round_trip_is_exact(tmp_path, name):
    ckpt = make_ckpt()
    path = tmp_path / name
    save_checkpoint(ckpt, path)
    got = load_checkpoint(path, dtype=None)
    assert got.network_class == "EDMPrecond"
    assert got.network_kwargs == {"img_resolution": 16, "img_channels": 3, "label_dim": 10, "channel_mult": [1, 2]}
    assert list(got.network_kwargs) == list(ckpt.network_kwargs)
    assert_same_state_dict(got.state_dict, ckpt.state_dict)
    assert got.metadata["notes"] == "unit test"
    assert got.metadata["amed_deploy_version"] and got.metadata["created"]
    assert "created" not in ckpt.metadata  # the caller's object is not modified
    assert leftovers(tmp_path) == [name]


def test_load_casts_to_fp32_by_default(tmp_path):
    save_checkpoint(make_ckpt(), tmp_path / "edm.pt")
    sd = load_checkpoint(tmp_path / "edm.pt").state_dict
    assert sd["u"].dtype == torch.float32 and sd["count"].dtype == torch.int64 and sd["mask"].dtype == torch.bool


@pytest.mark.parametrize("dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_reduced_precision_storage(tmp_path, dtype, torch_dtype):
    ckpt = make_ckpt()
    save_checkpoint(ckpt, tmp_path / "full.safetensors")
    save_checkpoint(ckpt, tmp_path / "half.safetensors", dtype=dtype)
    assert (tmp_path / "half.safetensors").stat().st_size < (tmp_path / "full.safetensors").stat().st_size
    stored = load_checkpoint(tmp_path / "half.safetensors", dtype=None).state_dict
    assert stored["model.map_layer0.weight"].dtype == torch_dtype
    assert stored["count"].dtype == torch.int64 and stored["mask"].dtype == torch.bool
    loaded = load_checkpoint(tmp_path / "half.safetensors").state_dict
    for k, t in ckpt.state_dict.items():
        if t.is_floating_point():
            assert loaded[k].dtype == torch.float32
            assert same_bits(loaded[k], t.to(torch_dtype).float()), k
        else:
            assert same_bits(loaded[k], t), k


def test_fp16_overflow_is_refused(tmp_path):
    ckpt = make_ckpt(state_dict={"w": torch.tensor([1.0, 1e6])})
    with pytest.raises(AmedError, match="outside the range of torch.float16"):
        save_checkpoint(ckpt, tmp_path / "x.safetensors", dtype="fp16")
    assert leftovers(tmp_path) == []


def test_shared_and_view_tensors_are_saved(tmp_path):
    base = torch.arange(12.0)
    ckpt = make_ckpt(state_dict={"a": base, "b": base, "c": base[3:7], "d": base.reshape(3, 4).t()})
    for name in ("x.pt", "x.safetensors"):
        save_checkpoint(ckpt, tmp_path / name)
        assert_same_state_dict(
            load_checkpoint(tmp_path / name).state_dict, {k: v.clone() for k, v in ckpt.state_dict.items()}
        )


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(network_kwargs={1: 2}), "non-string key 1"),
        (dict(network_kwargs={"a": {"b": {3: 4}}}), r"network_kwargs\.a\.b has a non-string key"),
        (dict(network_kwargs={"t": torch.zeros(1)}), "network_kwargs.t is a Tensor"),
        (dict(metadata={"f": object()}), "metadata.f is a object"),
        (dict(state_dict={1: torch.zeros(1)}), "non-string key 1"),
        (dict(state_dict={"a": [1.0]}), "not a tensor"),
        (dict(state_dict={}), "state_dict is empty"),
        (dict(network_class="not a class"), "is not a class name"),
    ],
)
def test_save_validates(tmp_path, bad, message):
    with pytest.raises(AmedError, match=message):
        save_checkpoint(make_ckpt(**bad), tmp_path / "edm.pt")
    assert leftovers(tmp_path) == []


def test_unsupported_storage_dtype(tmp_path):
    with pytest.raises(AmedError, match="unsupported dtype"):
        save_checkpoint(make_ckpt(), tmp_path / "edm.pt", dtype="int8")


# ------------------------------------------------------------------ atomic saving


def test_pt_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "edm.pt"

    def broken_save(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make_ckpt(), path)
    assert leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "edm.pt"
    save_checkpoint(make_ckpt(), path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **kw):
        f.write(b"junk")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        save_checkpoint(make_ckpt(network_class="VPPrecond"), path)
    assert path.read_bytes() == before and leftovers(tmp_path) == ["edm.pt"]


def test_safetensors_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError):
        save_checkpoint(make_ckpt(), tmp_path / "edm.safetensors")
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ loading bad files


def test_missing_empty_directory_unrecognised(tmp_path):
    with pytest.raises(AmedError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(AmedError, match="is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(AmedError, match="is a directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("hello world, not a checkpoint")
    with pytest.raises(AmedError, match="unrecognised file"):
        load_checkpoint(tmp_path / "notes.txt")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("saved")
    out = {}
    for name in ("edm.pt", "edm.safetensors"):
        save_checkpoint(make_ckpt(), folder / name)
        out[name] = (folder / name).read_bytes()
    return out


@pytest.mark.parametrize("name", ["edm.pt", "edm.safetensors"])
def test_truncated_files_raise_amed_error(tmp_path, saved, name):
    raw = saved[name]
    path = tmp_path / name
    for cut in sorted({1, 4, 8, 9, 20, 64, 100, len(raw) // 3, len(raw) // 2, len(raw) - 100, len(raw) - 1}):
        path.write_bytes(raw[:cut])
        with pytest.raises(AmedError):
            load_checkpoint(path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["edm.pt", "edm.safetensors"]), pos=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255)
)
def test_flipped_bytes_are_detected_or_harmless(tmp_path, saved, name, pos, xor):
    """A damaged file either fails with AmedError or (padding, zip bookkeeping) loads identical content."""
    raw = bytearray(saved[name])
    raw[int(pos * len(raw))] ^= xor
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    try:
        got = load_checkpoint(path, dtype=None)
    except AmedError:
        return
    want = make_ckpt()
    assert got.network_class == want.network_class
    assert got.network_kwargs == json.loads(json.dumps(want.network_kwargs))
    assert_same_state_dict(got.state_dict, want.state_dict)


def test_flipped_tensor_byte_in_safetensors_is_detected(tmp_path, saved):
    raw = bytearray(saved["edm.safetensors"])
    raw[-5] ^= 0x01  # inside the last tensor's data: no structure breaks, only the checksum notices
    path = tmp_path / "edm.safetensors"
    path.write_bytes(bytes(raw))
    with pytest.raises(AmedError, match="checksum does not match"):
        load_checkpoint(path)


def test_safetensors_header_without_its_key_order_is_refused(tmp_path, saved):
    """Found by the byte-flip fuzzer: 'order' -> 'ordes' loaded the right tensors in the wrong order."""
    raw = saved["edm.safetensors"].replace(b'\\"order\\"', b'\\"ordes\\"', 1)
    assert raw != saved["edm.safetensors"]
    path = tmp_path / "edm.safetensors"
    path.write_bytes(raw)
    with pytest.raises(AmedError, match="key order missing"):
        load_checkpoint(path)


def test_plain_state_dict_pt(tmp_path):
    torch.save(TinyNet().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(AmedError, match=r"plain state dict .* `amed-deploy convert"):
        load_checkpoint(tmp_path / "weights.pt")


def test_pickled_module_pt_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(AmedError, match=r"holds a pickled Python object \(torch\.nn\.modules\.linear\.Linear\)"):
        load_checkpoint(tmp_path / "model.pt")


def test_plain_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(AmedError, match="plain safetensors file"):
        load_checkpoint(tmp_path / "w.safetensors")


def _payload(**changes) -> dict:
    ckpt = make_ckpt()
    payload = {
        "format": FORMAT,
        "format_version": 1,
        "network_class": ckpt.network_class,
        "network_kwargs": ckpt.network_kwargs,
        "state_dict": ckpt.state_dict,
        "metadata": ckpt.metadata,
        "content_sha256": "0" * 64,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(format="something/else"), "format tag 'something/else'"),
        (dict(format_version=99), "format version 99.*upgrade"),
        (dict(format_version="1"), "bad format_version"),
        (dict(state_dict={1: torch.zeros(1)}), "non-string key 1"),
        (dict(state_dict={"a": 1}), "not a tensor"),
        (dict(network_kwargs={2: 1}), "non-string key 2"),
        (dict(metadata=None), "missing the 'metadata' field"),
        (dict(), "content checksum does not match"),
    ],
)
def test_bad_pt_payloads(tmp_path, changes, message):
    torch.save(_payload(**changes), tmp_path / "edm.pt")
    with pytest.raises(AmedError, match=message):
        load_checkpoint(tmp_path / "edm.pt")


def test_not_a_dict_pt(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "edm.pt")
    with pytest.raises(AmedError, match="not an amed-deploy checkpoint"):
        load_checkpoint(tmp_path / "edm.pt")


def test_content_decides_over_suffix(tmp_path):
    ckpt = make_ckpt()
    save_checkpoint(ckpt, tmp_path / "a.safetensors")
    (tmp_path / "a.safetensors").rename(tmp_path / "really-safetensors.pt")
    save_checkpoint(ckpt, tmp_path / "b.pt")
    (tmp_path / "b.pt").rename(tmp_path / "model.bin")
    for name in ("really-safetensors.pt", "model.bin"):
        assert_same_state_dict(load_checkpoint(tmp_path / name, dtype=None).state_dict, ckpt.state_dict)


def test_pkl_dispatches_to_safe_snapshot_loader(tmp_path):
    net = TinyNet()
    path = write_snapshot(tmp_path / "network-snapshot-000000.pkl", net, TINY_KWARGS)
    got = load_checkpoint(path, dtype=None)
    assert got.network_class == "TinyNet" and got.network_kwargs == TINY_KWARGS_PLAIN
    assert_same_state_dict(got.state_dict, net.state_dict())


def test_file_sha256(tmp_path):
    data = bytes(range(256)) * 9000
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_describe_checkpoint():
    d = describe_checkpoint(
        make_ckpt(network_kwargs={"img_resolution": 32, "img_channels": 3, "model_type": "SongUNet"})
    )
    assert (d["model_type"], d["architecture"], d["image_shape"], d["label_dim"]) == (
        "SongUNet",
        "DDPM++",
        [3, 32, 32],
        0,
    )
    assert (d["sigma_min"], d["sigma_max"], d["sigma_data"]) == (0.0, math.inf, 0.5)
    assert d["parameters"] == sum(t.numel() for k, t in make_ckpt().state_dict.items()) - 4
    ve = describe_checkpoint(make_ckpt(network_class="VEPrecond", network_kwargs={"embedding_type": "fourier"}))
    assert (ve["sigma_min"], ve["sigma_max"], ve["architecture"]) == (0.02, 100.0, "NCSN++")
    vp = describe_checkpoint(make_ckpt(network_class="VPPrecond", network_kwargs={}))
    assert vp["sigma_max"] == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))
    assert vp["sigma_min"] == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9e-10 + 0.1e-5)))


# ------------------------------------------------------------------ CLI


def runner() -> CliRunner:
    try:  # click 8.1 mixes stderr into stdout unless told not to; 8.2+ keeps them apart by default
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run_cli(*args: str):
    return runner().invoke(main, [str(a) for a in args])


def test_help_describes_the_pipeline():
    result = run_cli("--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "distill" in text and "export" in text and "build" in text and "run" in text
    assert "convert" in text and "info" in text and "--debug" in text


def test_cli_convert_and_info(tmp_path):
    net = TinyNet()
    snap = write_snapshot(tmp_path / "edm-tiny.pkl", net, TINY_KWARGS)
    out = tmp_path / "edm.pt"
    result = run_cli("convert", snap, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.exists() and f"sha256:     {file_sha256(out)}" in result.output
    assert "TinyNet" in result.output and f"{sum(p.numel() for p in net.parameters()):,}" in result.output
    assert_same_state_dict(load_checkpoint(out, dtype=None).state_dict, net.state_dict())

    small = tmp_path / "edm-fp16.safetensors"
    assert run_cli("convert", out, "--out", small, "--dtype", "fp16").exit_code == 0
    assert load_checkpoint(small, dtype=None).state_dict["enc.16x16_conv.conv0.weight"].dtype == torch.float16

    for path in (out, small, snap):
        result = run_cli("info", path)
        assert result.exit_code == 0, result.output
        assert "TinyNet" in result.output and "image shape:  3x16x16" in result.output
        assert "label_dim:    0" in result.output
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["network_class"] == "TinyNet" and info["metadata"]["source"] == "edm-tiny.pkl"


def test_cli_convert_refuses_to_overwrite(tmp_path):
    snap = write_snapshot(tmp_path / "s.pkl", TinyNet(), TINY_KWARGS)
    out = tmp_path / "edm.pt"
    out.write_bytes(b"precious")
    result = run_cli("convert", snap, "--out", out)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {out} already exists; pass --force to replace it"
    assert out.read_bytes() == b"precious"
    assert run_cli("convert", snap, "--out", out, "--force").exit_code == 0
    assert load_checkpoint(out).network_class == "TinyNet"


def _evil_pickle(marker: Path) -> bytes:
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"ema": Evil()})


@pytest.mark.parametrize("kind", ["missing", "random", "evil", "truncated", "plain-state-dict"])
def test_cli_bad_input_is_one_error_line(tmp_path, kind):
    marker = tmp_path / "PWNED"
    src = tmp_path / "in.pkl"
    if kind == "random":
        src.write_bytes(bytes(range(7, 250)))
    elif kind == "evil":
        src.write_bytes(_evil_pickle(marker))
    elif kind == "truncated":
        raw = write_snapshot(src, TinyNet(), TINY_KWARGS).read_bytes()
        src.write_bytes(raw[: len(raw) // 2])
    elif kind == "plain-state-dict":
        src = tmp_path / "in.pt"
        torch.save(TinyNet().state_dict(), src)
    out = tmp_path / "out" / "edm.pt"
    for args in (("convert", src, "--out", out), ("info", src)):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.output
        assert not out.parent.exists()
    assert not marker.exists()


def test_cli_debug_shows_the_exception(tmp_path):
    result = runner().invoke(main, ["--debug", "info", str(tmp_path / "nope.pt")])
    assert result.exit_code != 0 and isinstance(result.exception, AmedError)


# ------------------------------------------------------------------ with the real networks


def _tiny_edm():
    from presets import TINY_SONGUNET_KWARGS

    from amed_deploy.networks import build_network, randomize_

    net = build_network("EDMPrecond", dict(TINY_SONGUNET_KWARGS))
    return randomize_(net, seed=3).eval(), dict(TINY_SONGUNET_KWARGS)


def _outputs(net) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g) * 5
    labels = torch.nn.functional.one_hot(torch.tensor([1, 7]), 10).float()
    with torch.no_grad():
        return net(x, torch.tensor([0.5, 12.0]), labels)


def test_snapshot_to_model_end_to_end(tmp_path):
    """EDM-style pickle of a real EDMPrecond -> convert -> build_model: identical outputs."""
    from amed_deploy.networks import count_parameters

    net, kwargs = _tiny_edm()
    snap = write_snapshot(tmp_path / "network-snapshot-tiny.pkl", net, kwargs, marker=tmp_path / "PWNED")
    out = tmp_path / "edm.pt"
    result = run_cli("convert", snap, "--out", out)
    assert result.exit_code == 0, result.output
    assert "EDMPrecond (SongUNet)" in result.output and f"{count_parameters(net):,}" in result.output
    ckpt = load_checkpoint(out)
    assert ckpt.network_class == "EDMPrecond" and ckpt.network_kwargs == kwargs
    assert ckpt.num_parameters() == count_parameters(net)
    model = build_model(ckpt)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(_outputs(model), _outputs(net))
    assert not (tmp_path / "PWNED").exists()

    save_checkpoint(ckpt, tmp_path / "edm.safetensors", dtype="fp16")
    half = build_model(load_checkpoint(tmp_path / "edm.safetensors"))
    torch.testing.assert_close(_outputs(half), _outputs(net), atol=2e-2, rtol=2e-2)


def test_build_model_reports_mismatched_keys():
    net, kwargs = _tiny_edm()
    sd = dict(net.state_dict())
    sd.pop("model.map_layer0.weight")
    sd["model.extra.weight"] = torch.zeros(1)
    sd["model.map_layer1.bias"] = torch.zeros(3)
    with pytest.raises(AmedError) as e:
        build_model(Checkpoint("EDMPrecond", kwargs, sd, {}))
    msg = str(e.value)
    assert "1 missing keys (model.map_layer0.weight)" in msg
    assert "1 unexpected keys (model.extra.weight)" in msg
    assert "model.map_layer1.bias [3] vs" in msg


def test_build_model_bad_class_or_kwargs():
    with pytest.raises(AmedError, match="NoSuchPrecond"):
        build_model(Checkpoint("NoSuchPrecond", {}, {"a": torch.zeros(1)}, {}))
    with pytest.raises(AmedError):
        build_model(Checkpoint("EDMPrecond", {"img_resolution": 16}, {"a": torch.zeros(1)}, {}))
