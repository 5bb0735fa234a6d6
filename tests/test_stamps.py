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


# --- #17: a solver name means the published formula; older records meant the formula's old name ----------

OLD_SAMPLER_FIELDS = ("solver", "nfe", "num_points", "schedule", "sigma_min", "sigma_max", "afs", "rho", "t_steps")


def _plugin_sampler(solver: str = "amed_ipndm") -> SamplerConfig:
    return SamplerConfig.create(solver, 5, "time_uniform", (0.002, 80.0), True)


def _as_written_before(cfg: SamplerConfig) -> dict:
    """The sampler record as versions before #17 wrote it: max_order for every solver, no other option."""
    return {**{k: v for k, v in cfg.to_dict().items() if k in OLD_SAMPLER_FIELDS}, "max_order": 4}


def _predictor_file(path, sampler: dict, version: int):
    from amed_deploy.predictor_file import AMED_VERSION

    save_predictor(path, PredictorBundle(AMEDPredictor(PredictorConfig()), _plugin_sampler(), "t", "ab" * 32))
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == AMED_VERSION == 2  # AMED files keep version 2 (3 adds EPD tables)
    payload.update(format_version=version, sampler=sampler)
    torch.save(payload, path)
    return path


def test_a_version_1_predictor_for_amed_ipndm_reads_as_the_uneven_formula(tmp_path):
    from amed_deploy.predictor_file import load_predictor

    old = _predictor_file(tmp_path / "old.pt", _as_written_before(_plugin_sampler()), 1)
    cfg = load_predictor(old).sampler
    assert cfg.solver == "amed_ipndm_uneven" and cfg.max_order == 4 and cfg.solver_config.name == cfg.solver
    assert cfg.t_steps == _plugin_sampler().t_steps
    # a name whose formula did not change reads as it is; its old max_order is dropped (it takes none)
    amed = _predictor_file(tmp_path / "amed.pt", _as_written_before(_plugin_sampler("amed")), 1)
    assert load_predictor(amed).sampler == _plugin_sampler("amed")


def test_a_current_predictor_for_amed_ipndm_stays_amed_ipndm(tmp_path):
    from amed_deploy.predictor_file import load_predictor

    path = tmp_path / "p.pt"
    save_predictor(path, PredictorBundle(AMEDPredictor(PredictorConfig()), _plugin_sampler(), "t", "ab" * 32))
    assert load_predictor(path).sampler == _plugin_sampler()
    written_by_a_newer = _predictor_file(tmp_path / "new.pt", _plugin_sampler().to_dict(), 4)
    with pytest.raises(AmedError, match="format version 4, from a newer amed-deploy"):
        load_predictor(written_by_a_newer)


def _graph_record(version: int, sampler: dict) -> dict:
    d = GraphSpec("amed", "fp32", (3, 8, 8), 0, 1, 1, 1, sampler=_plugin_sampler()).to_dict()
    d.update(format_version=version, sampler=sampler)
    if version == 1:
        del d["sigma_range"]
    return d


@pytest.mark.parametrize("version", [1, 2])
def test_a_version_2_graph_record_for_amed_ipndm_reads_as_the_uneven_formula(version):
    spec = GraphSpec.from_dict(_graph_record(version, _as_written_before(_plugin_sampler())))
    assert spec.sampler.solver == "amed_ipndm_uneven" and spec.sampler.max_order == 4
    assert spec.to_dict()["format_version"] == FORMAT_VERSION == 4  # rewritten under its new name
    assert GraphSpec.from_dict(spec.to_dict()) == spec


def test_a_current_graph_record_for_amed_ipndm_stays_amed_ipndm():
    spec = GraphSpec.from_dict(_graph_record(FORMAT_VERSION, _plugin_sampler().to_dict()))
    assert spec.sampler == _plugin_sampler()


def test_a_manifest_embedding_a_version_2_graph_record_reads_it_renamed(tmp_path):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(os.urandom(64))
    path = manifest_path_for(plan)
    for version, solver in ((2, "amed_ipndm_uneven"), (FORMAT_VERSION, "amed_ipndm")):
        sampler = _as_written_before(_plugin_sampler()) if version == 2 else _plugin_sampler().to_dict()
        path.write_text(json.dumps(make_manifest(plan, graph=_graph_record(version, sampler)).to_dict()))
        assert read_manifest(path).spec.sampler.solver == solver
