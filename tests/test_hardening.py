"""Hostile or damaged inputs: each must end as one AmedError line, never another exception, a huge
allocation or a silent success (absurd kwargs, NaN weights, deep nesting, pickled modules), and
predictors are bound to the model's values rather than its file's bytes."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_KWARGS, tiny_net
from presets import TINY_ADM_KWARGS, TINY_NCSNPP_KWARGS, TINY_SONGUNET_KWARGS
from safetensors.torch import save_file

from amed_deploy import assets, networks
from amed_deploy.checkpoint.build import build_model
from amed_deploy.checkpoint.format import Checkpoint, model_sha256, plain_json, save_checkpoint
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.config import SamplerConfig
from amed_deploy.errors import AmedError
from amed_deploy.files import file_sha256
from amed_deploy.networks import (
    NETWORK_CLASSES,
    build_network,
)
from amed_deploy.predictor import AMEDPredictor
from amed_deploy.predictor_file import PredictorBundle, load_predictor, save_predictor


class MyNet(torch.nn.Module):
    """A user's own module class, saved whole with torch.save(model)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _save(tmp_path: Path, kwargs: dict, sd: dict | None = None, name: str = "edm.pt") -> Path:
    path = tmp_path / name
    sd = tiny_net().state_dict() if sd is None else sd
    save_checkpoint(Checkpoint("EDMPrecond", kwargs, sd, {}), path)
    return path


# ---------------------------------------------------------------- absurd network kwargs

BAD_KWARGS = [
    ("label_dim", -3),
    ("label_dim", True),
    ("img_channels", 0),
    ("img_channels", 1.0),
    ("img_resolution", -16),
    ("model_channels", -16),
    ("model_channels", False),
    ("channel_mult", [1, -1]),
    ("channel_mult", []),
    ("channel_mult", "12"),
    ("attn_resolutions", [0]),
    ("num_blocks", 0),
    ("num_blocks", 10**6),
    ("augment_dim", -1),
    ("channel_mult_emb", 0),
    ("channel_mult_noise", -2),
    ("dropout", 1.5),
    ("resample_filter", [0, 0]),
    ("img_resolution", 15),  # two levels halve it once: must be even
    ("model_channels", 18),  # EDM's GroupNorm takes min(32, 18 // 4) = 4 groups, which do not divide 18
]


@pytest.mark.parametrize(("name", "value"), BAD_KWARGS, ids=[f"{n}={v!r}" for n, v in BAD_KWARGS])
def test_build_network_refuses_bad_kwargs(name, value):
    with pytest.raises(AmedError) as e:
        build_network("EDMPrecond", {**TINY_KWARGS, name: value})
    msg = _one_line(e)
    assert "cannot build EDMPrecond" in msg
    assert name in msg or "GroupNorm" in msg


@pytest.mark.parametrize("cls", ["VPPrecond", "iDDPMPrecond"])
@pytest.mark.parametrize("m", [0, -5, 2.5, 10**9])
def test_build_network_refuses_bad_m(cls, m):
    with pytest.raises(AmedError, match="M must be"):
        build_network(cls, {**TINY_KWARGS, "M": m})


def test_build_network_maps_construction_errors():
    with pytest.raises(AmedError, match="cannot build EDMPrecond.*unknown model_type"):
        build_network("EDMPrecond", {**TINY_KWARGS, "model_type": "Nope"})
    with pytest.raises(AmedError, match="cannot build EDMPrecond"):
        build_network("EDMPrecond", {**TINY_KWARGS, "no_such_kwarg": 1})


@pytest.mark.parametrize(("name", "value"), [("label_dim", -3), ("model_channels", True), ("channel_mult", [1, 0])])
def test_build_model_refuses_bad_kwargs_from_a_saved_checkpoint(tmp_path, name, value):
    path = _save(tmp_path, {**TINY_KWARGS, name: value})
    ckpt = load_checkpoint(path)
    with pytest.raises(AmedError, match=f"cannot build EDMPrecond: {name}"):
        build_model(ckpt)


def test_absurd_width_is_refused_fast_without_allocating(tmp_path, monkeypatch):
    """model_channels=100000 would mean ~10^12 weights; the meta-device dry run refuses it by shape."""
    path = _save(tmp_path, {**TINY_KWARGS, "model_channels": 100000})
    ckpt = load_checkpoint(path)
    calls = []
    real = networks.build_network
    monkeypatch.setattr(networks, "build_network", lambda *a, **k: calls.append(k) or real(*a, **k))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(AmedError) as e:
        build_model(ckpt)
    assert time.perf_counter() - start < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024 < 1e9
    msg = _one_line(e)
    assert msg.startswith("the weights do not match EDMPrecond:") and "shape mismatches" in msg
    assert "model.map_layer0.weight [64, 16] vs [400000, 100000]" in msg
    assert calls == [{"meta": True}]  # never built for real


def test_iddpm_noise_table_length_is_checked_before_construction(tmp_path):
    net = build_network("iDDPMPrecond", dict(TINY_ADM_KWARGS, M=10))
    ckpt = Checkpoint("iDDPMPrecond", dict(TINY_ADM_KWARGS, M=10000), net.state_dict(), {})
    start = time.perf_counter()
    with pytest.raises(AmedError, match=r"u \[11\] vs \[10001\]"):
        build_model(ckpt)
    assert time.perf_counter() - start < 1  # iDDPM's constructor loop over M never ran


TINY_CONFIGS = {
    "conftest": TINY_KWARGS,
    "songunet": TINY_SONGUNET_KWARGS,
    "ncsnpp": TINY_NCSNPP_KWARGS,
    "adm": TINY_ADM_KWARGS,
}


@pytest.mark.parametrize("cls", list(NETWORK_CLASSES))
@pytest.mark.parametrize("config", list(TINY_CONFIGS))
def test_meta_construction_matches_real_construction(cls, config):
    kwargs = TINY_CONFIGS[config]
    meta = build_network(cls, dict(kwargs), meta=True).state_dict()
    real = build_network(cls, dict(kwargs)).state_dict()
    assert list(meta) == list(real)
    assert {k: (v.shape, v.dtype) for k, v in meta.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}
    # nothing but iDDPM's noise table (built on the CPU by design) was allocated
    assert {k for k, v in meta.items() if v.device.type != "meta"} <= {"u"}


def test_build_model_still_loads_every_class():
    for cls in NETWORK_CLASSES:
        net = build_network(cls, dict(TINY_ADM_KWARGS))
        model = build_model(Checkpoint(cls, dict(TINY_ADM_KWARGS), net.state_dict(), {}))
        for k, v in model.state_dict().items():
            assert v.device.type == "cpu" and torch.equal(v, net.state_dict()[k]), (cls, k)


# ---------------------------------------------------------------- non-finite weights


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    sd = dict(tiny_net().state_dict())
    key = "model.enc.16x16_conv.weight"
    w = sd[key].clone().flatten()
    w[:10] = float("nan")
    w[10:12] = float("inf")
    sd[key] = w.reshape(sd[key].shape)
    last = list(sd)[-1]  # a later tensor: the message names the first in state-dict order
    assert last != key
    sd[last] = torch.full_like(sd[last], -float("inf"))
    ckpt = load_checkpoint(_save(tmp_path, dict(TINY_KWARGS), sd))
    with pytest.raises(AmedError) as e:
        build_model(ckpt)
    msg = _one_line(e)
    assert f"has 12 non-finite values (NaN/inf) in '{key}'" in msg, msg
    assert "(and 1 more tensors)" in msg and "damaged or training diverged" in msg


def test_finite_fp16_weights_are_accepted(tmp_path):
    path = tmp_path / "edm.safetensors"
    save_checkpoint(Checkpoint("EDMPrecond", dict(TINY_KWARGS), tiny_net().state_dict(), {}), path, dtype="fp16")
    build_model(load_checkpoint(path, dtype=None))


# ---------------------------------------------------------------- deep nesting


def _safetensors_with_header(path: Path, header_json: str) -> Path:
    save_file({"w": torch.zeros(2)}, str(path), metadata={"amed_deploy": header_json})
    return path


def test_deeply_nested_safetensors_header_is_refused(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    path = _safetensors_with_header(tmp_path / "deep.safetensors", deep)
    with pytest.raises(AmedError, match="nested too deeply"):
        load_checkpoint(path)


def test_nesting_within_json_limits_but_absurd_is_refused(tmp_path):
    nested: object = 1
    for _ in range(500):  # json.loads accepts this; plain_json's bound does not
        nested = [nested]
    header = {
        "format": "amed-deploy/edm-checkpoint",
        "format_version": 1,
        "network_class": "EDMPrecond",
        "network_kwargs": {"x": nested},
        "metadata": {},
        "order": ["w"],
        "content_sha256": "0" * 64,
    }
    path = _safetensors_with_header(tmp_path / "deep.safetensors", json.dumps(header))
    with pytest.raises(AmedError, match="network_kwargs is nested too deeply"):
        load_checkpoint(path)
    shallower: object = 1
    for _ in range(100):  # torch.save itself recurses, so stay well within Python's limit here
        shallower = [shallower]
    header["network_kwargs"] = {"x": shallower}
    torch.save({**header, "state_dict": {"w": torch.zeros(2)}}, tmp_path / "deep.pt")
    with pytest.raises(AmedError, match="nested too deeply"):
        load_checkpoint(tmp_path / "deep.pt")


def test_plain_json_does_not_recurse_without_bound():
    nested: object = {}
    for _ in range(100_000):
        nested = {"a": nested}
    with pytest.raises(AmedError, match="kwargs is nested too deeply"):
        plain_json(nested, "kwargs")
    assert plain_json({"a": [[1, (2, 3)]]}, "kwargs") == {"a": [[1, [2, 3]]]}


# ---------------------------------------------------------------- whole pickled modules


def test_whole_module_as_checkpoint_names_the_class(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(MyNet(), path)
    with pytest.raises(AmedError) as e:
        load_checkpoint(path)
    msg = _one_line(e)
    assert "holds a pickled Python object (test_hardening.MyNet)" in msg, msg
    assert "torch.save(model)" in msg and "state dict" in msg and "amed-deploy convert" in msg
    assert "Weights only load failed" not in msg and "add_safe_globals" not in msg


def test_whole_module_as_predictor_names_the_class(tmp_path):
    path = tmp_path / "amed5.pt"
    torch.save(AMEDPredictor(), path)
    with pytest.raises(AmedError) as e:
        load_predictor(path)
    msg = _one_line(e)
    assert "holds a pickled Python object (amed_deploy.predictor.AMEDPredictor)" in msg, msg
    assert "amed-deploy distill" in msg
    assert "Weights only load failed" not in msg and "add_safe_globals" not in msg


# ---------------------------------------------------------------- model hash


def test_model_sha256_ignores_storage_but_not_weights(tmp_path):
    original = load_checkpoint(assets.MODEL, dtype=None)
    assert {t.dtype for t in original.state_dict.values() if t.is_floating_point()} == {torch.float16}
    files = {
        "fp32.pt": dict(dtype="fp32"),
        "fp16.pt": dict(dtype="fp16"),
        "copy.safetensors": dict(),
    }
    hashes = {"bundled": model_sha256(original)}
    for name, kw in files.items():
        save_checkpoint(original, tmp_path / name, **kw)
        hashes[name] = model_sha256(load_checkpoint(tmp_path / name))  # loaded as fp32
        assert model_sha256(load_checkpoint(tmp_path / name, dtype=None)) == hashes[name]  # as stored
    assert len(set(hashes.values())) == 1, hashes
    file_hashes = {file_sha256(tmp_path / name) for name in files} | {file_sha256(assets.MODEL)}
    assert file_sha256(tmp_path / "fp32.pt") != file_sha256(tmp_path / "fp16.pt") != file_sha256(assets.MODEL)
    assert hashes["bundled"] not in file_hashes

    same = Checkpoint(
        "training.networks." + original.network_class,
        {k: tuple(v) if isinstance(v, list) else v for k, v in original.network_kwargs.items()},
        original.state_dict,
        {"note": "metadata is not part of the model"},
    )
    assert model_sha256(same) == hashes["bundled"]

    key = next(k for k, t in original.state_dict.items() if t.is_floating_point())
    sd = dict(original.state_dict)
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] += 1
    assert model_sha256(Checkpoint(original.network_class, original.network_kwargs, sd, {})) != hashes["bundled"]
    kwargs = {**original.network_kwargs, "sigma_data": 0.25}
    assert model_sha256(Checkpoint(original.network_class, kwargs, original.state_dict, {})) != hashes["bundled"]


def test_bundled_predictor_follows_the_model_not_the_file(tmp_path):
    converted = tmp_path / "fashion.pt"
    save_checkpoint(load_checkpoint(assets.MODEL), converted, dtype="fp32")
    ckpt = load_checkpoint(converted)
    assert file_sha256(converted) != file_sha256(assets.MODEL)
    for path in (p for by_nfe in assets.BUNDLED.values() for p in by_nfe.values()):
        bundle = load_predictor(path, model_sha256=model_sha256(ckpt), checkpoint_sha256=file_sha256(converted))
        assert bundle.model_sha256 == model_sha256(ckpt)
        assert bundle.checkpoint_sha256 == file_sha256(assets.MODEL)  # provenance kept

    other = tmp_path / "tiny.pt"
    save_checkpoint(Checkpoint("EDMPrecond", dict(TINY_KWARGS), tiny_net().state_dict(), {}), other)
    with pytest.raises(AmedError) as e:
        load_predictor(assets.PREDICTORS[5], model_sha256=model_sha256(load_checkpoint(other)))
    msg = _one_line(e)
    assert "distilled for checkpoint model sha256" in msg
    assert msg.endswith("use the checkpoint it was distilled for, or pass --ignore-checkpoint-mismatch")
    assert "--force" not in msg
    load_predictor(assets.PREDICTORS[5], model_sha256=model_sha256(load_checkpoint(other)), allow_mismatch=True)


def _bundle(sha: str = "ab" * 32, model: str | None = None) -> PredictorBundle:
    sampler = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)
    torch.manual_seed(0)
    return PredictorBundle(AMEDPredictor(), sampler, "enc.8x8_block0", sha, {}, model)


def test_predictor_without_model_hash_falls_back_to_the_file_hash(tmp_path):
    path = tmp_path / "old.pt"
    save_predictor(path, _bundle())
    assert "model_sha256" not in torch.load(path, weights_only=True)  # the layout older versions wrote
    assert load_predictor(path, model_sha256="ef" * 32, checkpoint_sha256="ab" * 32).model_sha256 is None
    with pytest.raises(AmedError, match="distilled for checkpoint file sha256 ababababab.*--ignore-checkpoint"):
        load_predictor(path, model_sha256="ef" * 32, checkpoint_sha256="cd" * 32)
    with pytest.raises(AmedError, match="not a model hash, so it cannot be checked"):
        load_predictor(path, model_sha256="ef" * 32)  # asked for a check that cannot be made


def test_predictor_with_model_hash_ignores_the_file_hash(tmp_path):
    path = tmp_path / "new.pt"
    save_predictor(path, _bundle(model="ef" * 32))
    assert load_predictor(path, model_sha256="ef" * 32, checkpoint_sha256="cd" * 32).model_sha256 == "ef" * 32
    with pytest.raises(AmedError, match="distilled for checkpoint model sha256 efefefef"):
        load_predictor(path, model_sha256="12" * 32, checkpoint_sha256="ab" * 32)


def test_damaged_predictor_files_are_refused(tmp_path):
    path = tmp_path / "p.pt"
    save_predictor(path, _bundle(model="ef" * 32))
    payload = torch.load(path, weights_only=True)

    def refused(change: dict, match: str) -> None:
        torch.save({**payload, **change}, path)
        with pytest.raises(AmedError, match=match):
            load_predictor(path)

    sd = dict(payload["state_dict"])
    sd["head_r.weight"] = torch.full_like(sd["head_r.weight"], float("nan"))
    refused({"state_dict": sd}, "non-finite .* in 'head_r.weight'")
    refused({"predictor_config": {**payload["predictor_config"], "hidden": 10**9}}, "predictor_config.hidden")
    refused({"predictor_config": {**payload["predictor_config"], "time_channels": 3}}, "time_channels")
    refused({"predictor_config": [1, 2]}, "predictor_config is a list")
    refused({"model_sha256": "not-a-hash"}, "model_sha256 is not a sha256")
