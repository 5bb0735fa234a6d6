"""The version stamp of every file format: one spelling when written, one policy when read (older
versions read, newer or malformed ones refused), and the older schema/schema_version spelling of graph
records and engine manifests still read."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_manifest import make_manifest, make_spec

from amed_deploy.checkpoint.format import Checkpoint, save_checkpoint
from amed_deploy.config import SamplerConfig
from amed_deploy.errors import AmedError
from amed_deploy.manifest import manifest_path_for, read_manifest
from amed_deploy.metadata import FORMAT_VERSION, GraphSpec
from amed_deploy.predictor import AMEDPredictor, PredictorConfig
from amed_deploy.predictor_file import PredictorBundle, save_predictor
from amed_deploy.records import check_stamp, stamp


def _check(record: dict, current: int = 1) -> int:
    return check_stamp(record, "test/thing", current, "thing.json", "a test thing")


def test_stamp_and_check_round_trip():
    assert stamp("test/thing", 1) == {"format": "test/thing", "format_version": 1}
    assert _check(stamp("test/thing", 1)) == 1


def test_older_versions_are_read_and_reported():
    assert _check(stamp("test/thing", 2), current=3) == 2
    assert _check(stamp("test/thing", 1), current=3) == 1


def test_a_newer_version_is_refused_with_the_fix():
    with pytest.raises(AmedError, match="thing.json is format version 2, from a newer amed-deploy.*upgrade"):
        _check(stamp("test/thing", 2))


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "1", None, [1]], ids=repr)
def test_a_malformed_version_is_refused(version):
    with pytest.raises(AmedError, match=r"thing.json has a bad format_version .*integer 1\.\.1"):
        _check({"format": "test/thing", "format_version": version})


def test_a_foreign_or_missing_tag_is_refused():
    with pytest.raises(AmedError, match="thing.json is not a test thing: format tag 'other', expected 'test/thing'"):
        _check(stamp("other", 1))
    with pytest.raises(AmedError, match="is not a test thing: no format tag"):
        _check({"version": 1})


def test_the_older_spelling_is_read_by_the_same_policy():
    assert _check({"schema": "test/thing", "schema_version": 1}) == 1
    with pytest.raises(AmedError, match="bad schema_version True"):
        _check({"schema": "test/thing", "schema_version": True})
    with pytest.raises(AmedError, match="format version 5"):
        _check({"schema": "test/thing", "schema_version": 5})


def _respell(d: dict) -> dict:
    """A record as amed-deploy wrote graph records and manifests before the stamps were unified."""
    out = {k: v for k, v in d.items() if k not in ("format", "format_version")}
    out["schema"], out["schema_version"] = d["format"], d["format_version"]
    return out


def test_every_format_writes_the_one_spelling(tmp_path):
    ckpt = Checkpoint("EDMPrecond", {}, {"w": torch.zeros(2)}, {})
    save_checkpoint(ckpt, tmp_path / "edm.pt")
    save_checkpoint(ckpt, tmp_path / "edm.safetensors")
    sampler = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)
    save_predictor(tmp_path / "p.pt", PredictorBundle(AMEDPredictor(PredictorConfig()), sampler, "t", "ab" * 32))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "edm.safetensors"), framework="pt") as f:
        safetensors_header = json.loads(f.metadata()["amed_deploy"])
    plan = tmp_path / "engine.plan"
    plan.write_bytes(os.urandom(64))
    records = {
        "checkpoint": torch.load(tmp_path / "edm.pt", weights_only=True),
        "safetensors checkpoint": safetensors_header,
        "predictor": torch.load(tmp_path / "p.pt", weights_only=True),
        "graph": make_spec().to_dict(),
        "manifest": make_manifest(plan).to_dict(),
    }
    for name, record in records.items():
        assert {"format", "format_version"} <= record.keys(), name
        assert not {"schema", "schema_version"} & record.keys(), name


def test_graph_records_in_the_older_spelling_still_load():
    d = make_spec().to_dict()  # the older spelling was written by version 1, which had no sigma_range
    v1 = {**{k: v for k, v in d.items() if k != "sigma_range"}, "format_version": 1}
    assert GraphSpec.from_dict(_respell(v1)) == GraphSpec.from_dict(d)
    newer = FORMAT_VERSION + 1
    with pytest.raises(AmedError, match=f"amed-deploy metadata is format version {newer}"):
        GraphSpec.from_dict({**_respell(d), "schema_version": newer})


def test_engine_manifests_in_the_older_spelling_still_load(tmp_path):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(os.urandom(64))
    m = make_manifest(plan)
    path = manifest_path_for(plan)
    path.write_text(json.dumps({**_respell(m.to_dict()), "graph": _respell(m.graph)}))
    assert read_manifest(path).spec == m.spec
    path.write_text(json.dumps({**_respell(m.to_dict()), "schema": "amed-deploy/other"}))
    with pytest.raises(AmedError, match="engine.plan.json: it is not a TensorRT plan manifest"):
        read_manifest(path)
