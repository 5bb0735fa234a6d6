"""Hostile records: every malformed graph metadata, sampler configuration or engine manifest is one
AmedError, metadata must match the graph it sits in, and a batch that cannot fit is refused before
anything is allocated."""

from __future__ import annotations

import copy
import json
import math
import time

import onnx
import pytest
import torch

from amed_deploy import amed_network
from amed_deploy.amed_network import graph_spec
from amed_deploy.config import MAX_NFE, SamplerConfig
from amed_deploy.errors import AmedError
from amed_deploy.manifest import manifest_path_for, read_manifest
from amed_deploy.memory import available_bytes, estimate_bytes
from amed_deploy.metadata import METADATA_KEY, TARGETS, GraphSpec, spec_from_metadata_props
from amed_deploy.networks import feature_shapes
from amed_deploy.runtime import Sampler

# --- graph metadata fields -------------------------------------------------------------------------

INT_FIELDS = [
    ("image_shape", 0),
    ("image_shape", 1),
    ("image_shape", 2),
    ("label_dim",),
    ("batch_min",),
    ("batch_opt",),
    ("batch_max",),
    ("sampler", "nfe"),
    ("sampler", "num_points"),
    ("sampler", "max_order"),  # read from `multistep_record`: the AMED-Solver takes no max_order
]
# one past each bound (the lower bounds are covered by -1 below)
OVER_BOUND = {
    ("image_shape", 0): 65,
    ("image_shape", 1): 16385,
    ("image_shape", 2): 16385,
    ("label_dim",): 100_001,
    ("batch_min",): 2**31,
    ("batch_opt",): 2**31,
    ("batch_max",): 2**31,
    ("sampler", "nfe"): MAX_NFE + 1,
    ("sampler", "num_points"): MAX_NFE + 2,
    ("sampler", "max_order"): 5,
}
BAD_INTS = [True, False, 2.5, 1e300, math.inf, math.nan, -1, "4", None, [4]]

FLOAT_FIELDS = [
    ("sampler", "sigma_min"),
    ("sampler", "sigma_max"),
    ("sampler", "t_steps", 0),
    ("sampler", "t_steps", -1),
    ("afs_rca", 0),
    ("afs_rca", 2),
]
BAD_FLOATS = [True, 1e300, math.inf, -math.inf, math.nan, "0.5", None, [0.5]]
NEGATIVE_INVALID = [("sampler", "sigma_min"), ("sampler", "sigma_max"), ("sampler", "t_steps", -1)]


@pytest.fixture(scope="module")
def record(amed_onnx) -> dict:
    """The real metadata of the exported AMED graph (batch 1..8, 1x16x16, 3 classes), as a dict."""
    props = {p.key: p.value for p in onnx.load(amed_onnx).metadata_props}
    d = json.loads(props[METADATA_KEY])
    if d.get("afs_rca") is None:  # make the AFS constants present so their parsing is exercised
        d["afs_rca"] = [0.5, 1.0, -0.25]
    return d


@pytest.fixture(scope="module")
def multistep_record(record) -> dict:
    """The same record with a sampler whose solver takes max_order (the AMED-Plugin on iPNDM)."""
    s = record["sampler"]
    sigmas = (s["sigma_min"], s["sigma_max"])
    cfg = SamplerConfig.create("amed_ipndm", s["nfe"], s["schedule"], sigmas, s["afs"], s["rho"])
    return put(record, ("sampler",), cfg.to_dict())


@pytest.fixture(scope="module")
def dpmpp_record(record) -> dict:
    """The same record with a sampler taking every option (the AMED-Plugin on DPM-Solver++)."""
    s = record["sampler"]
    sigmas = (s["sigma_min"], s["sigma_max"])
    cfg = SamplerConfig.create("amed_dpmpp", s["nfe"], s["schedule"], sigmas, s["afs"], s["rho"])
    return put(record, ("sampler",), cfg.to_dict())


def _record_for(path: tuple, record: dict, multistep_record: dict) -> dict:
    return multistep_record if path == ("sampler", "max_order") else record


def put(d: dict, path: tuple, value: object) -> dict:
    """A deep copy of d with the field at `path` replaced."""
    d = copy.deepcopy(d)
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


def parse(d: dict) -> GraphSpec:
    return spec_from_metadata_props({METADATA_KEY: json.dumps(d)})


def test_base_record_is_valid(record):
    spec = parse(record)
    assert spec.image_shape == (1, 16, 16) and spec.batch_max == 8 and spec.sampler is not None


@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
@pytest.mark.parametrize("path", INT_FIELDS, ids=lambda p: ".".join(map(str, p)))
def test_bad_integer_fields_are_refused(record, multistep_record, path, value):
    base = _record_for(path, record, multistep_record)
    if path == ("sampler", "max_order") and value is None:  # null is "not given": the reference's default
        assert parse(put(base, path, value)) == parse(base)
        return
    with pytest.raises(AmedError, match="malformed|inconsistent|batch range"):
        parse(put(base, path, value))


@pytest.mark.parametrize("path", INT_FIELDS, ids=lambda p: ".".join(map(str, p)))
def test_integers_over_their_bound_are_refused(record, multistep_record, path):
    with pytest.raises(AmedError, match=r"must be an integer in \d+\.\.\d+"):
        parse(put(_record_for(path, record, multistep_record), path, OVER_BOUND[path]))


def test_an_option_the_solver_takes_no_part_in_is_dropped(record, multistep_record):
    """Records before #17 wrote max_order for every solver; the AMED-Solver's is no option of it."""
    assert parse(record).sampler.max_order is None
    assert parse(put(record, ("sampler", "max_order"), 4)) == parse(record)
    assert parse(multistep_record).sampler.max_order == 4
    assert parse(put(multistep_record, ("sampler", "max_order"), 2)).sampler.max_order == 2


@pytest.mark.parametrize("name", ["predict_x0", "lower_order_final", "thresholding"])
@pytest.mark.parametrize("value", [1, 0, "true", [True], 1.0], ids=repr)
def test_bad_option_flags_are_refused(dpmpp_record, name, value):
    with pytest.raises(AmedError, match=f"malformed.*{name}"):
        parse(put(dpmpp_record, ("sampler", name), value))


def test_option_flags_are_read_and_checked_together(dpmpp_record):
    cfg = parse(dpmpp_record).sampler
    assert (cfg.max_order, cfg.predict_x0, cfg.lower_order_final, cfg.thresholding) == (3, True, True, True)
    noise = put(put(dpmpp_record, ("sampler", "predict_x0"), False), ("sampler", "thresholding"), False)
    assert parse(noise).sampler.solver_options == {
        "max_order": 3,
        "predict_x0": False,
        "lower_order_final": True,
        "thresholding": False,
    }
    with pytest.raises(AmedError, match="thresholding applies to data prediction"):
        parse(put(dpmpp_record, ("sampler", "predict_x0"), False))


@pytest.mark.parametrize("value", BAD_FLOATS, ids=repr)
@pytest.mark.parametrize("path", FLOAT_FIELDS, ids=lambda p: ".".join(map(str, p)))
def test_bad_float_fields_are_refused(record, path, value):
    with pytest.raises(AmedError, match="malformed|inconsistent"):
        parse(put(record, path, value))


@pytest.mark.parametrize("path", NEGATIVE_INVALID, ids=lambda p: ".".join(map(str, p)))
def test_negative_times_and_sigmas_are_refused(record, path):
    with pytest.raises(AmedError, match="malformed|inconsistent"):
        parse(put(record, path, -1.0))


@pytest.mark.parametrize("value", [True, math.inf, math.nan, "7"], ids=repr)
def test_bad_rho_is_refused(record, value):
    with pytest.raises(AmedError, match="malformed.*rho"):
        parse(put(record, ("sampler", "rho"), value))


@pytest.mark.parametrize("path", ["batch_max", "label_dim", "sampler.sigma_max", "sampler.nfe"])
def test_json_numbers_that_overflow_to_inf_are_refused(record, path):
    """1e400 is valid JSON and parses to inf."""
    text = json.dumps(put(record, tuple(path.split(".")), "@@")).replace('"@@"', "1e400")
    with pytest.raises(AmedError, match="(malformed|inconsistent).* got inf"):
        spec_from_metadata_props({METADATA_KEY: text})


def test_huge_json_integer_is_one_error():
    """Python refuses to parse ints over 4300 digits with a plain ValueError."""
    with pytest.raises(AmedError, match="not valid JSON"):
        GraphSpec.from_json('{"batch_max": ' + "9" * 5000 + "}")


def test_sampler_inconsistencies_are_refused(record):
    s = record["sampler"]
    cases = {
        "sigma_min above sigma_max": put(record, ("sampler", "sigma_min"), s["sigma_max"] * 2),
        "sigma_max over 1e5": put(record, ("sampler", "sigma_max"), 2e5),
        "first time over sigma_max": put(record, ("sampler", "t_steps", 0), s["sigma_max"] * 1.01),
        "times not decreasing": put(record, ("sampler", "t_steps", 1), s["t_steps"][0]),
        "afs as a string": put(record, ("sampler", "afs"), "false"),
        "t_steps as a string": put(record, ("sampler", "t_steps"), "80"),
        "sampler as a list": put(record, ("sampler",), [1, 2]),
        "afs_rca of two": put(record, ("afs_rca",), [0.5, 1.0]),
        "afs_rca over 1e6": put(record, ("afs_rca", 1), 2e6),
        "kind as a number": put(record, ("kind",), 1),
        "network as pairs": put(record, ("network",), [["class", "x"]]),
        "activation bytes as a string": put(record, ("network", "activation_bytes_per_sample"), "1"),
        "format version true": put(record, ("format_version",), True),
    }
    for what, d in cases.items():
        with pytest.raises(AmedError):
            parse(d)
            pytest.fail(f"accepted: {what}")


def test_integral_floats_are_accepted(multistep_record):
    base = parse(multistep_record)
    d = copy.deepcopy(multistep_record)
    d["image_shape"] = [float(v) for v in d["image_shape"]]
    for key in ("label_dim", "batch_min", "batch_opt", "batch_max"):
        d[key] = float(d[key])
    for key in ("nfe", "num_points", "max_order"):
        d["sampler"][key] = float(d["sampler"][key])
    spec = parse(d)
    assert spec == base
    assert isinstance(spec.batch_max, int) and isinstance(spec.sampler.nfe, int)
    assert all(type(v) is int for v in spec.image_shape)


# --- deep nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000])
def test_deeply_nested_metadata_is_refused(text):
    with pytest.raises(AmedError, match="nested too deeply"):
        GraphSpec.from_json(text)


def test_nested_field_is_refused_before_it_can_overflow_later(record):
    """Parseable, but asdict/json.dumps of it would recurse once per level."""
    deep: object = 0
    for _ in range(500):
        deep = [deep]
    with pytest.raises(AmedError, match="nested too deeply"):
        parse(put(record, ("producer",), {"x": deep}))


def _manifest_dict(tmp_path) -> dict:
    from test_manifest import make_manifest

    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"\0" * 4096)
    return make_manifest(plan).to_dict()


def test_deeply_nested_manifest_is_refused(tmp_path):
    path = tmp_path / "engine.plan.json"
    path.write_text("[" * 100_000)
    with pytest.raises(AmedError, match=r"engine.plan.json is nested too deeply"):
        read_manifest(path)
    deep: object = 0
    for _ in range(500):
        deep = {"a": deep}
    d = _manifest_dict(tmp_path)
    d["graph"]["producer"] = deep
    path.write_text(json.dumps(d))
    with pytest.raises(AmedError, match=r"engine.plan.json.*nested too deeply"):
        read_manifest(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(plan_bytes=True),
        lambda d: d.update(plan_bytes=4096.5),
        lambda d: d.update(plan_bytes=1e300),
        lambda d: d.update(plan_bytes=2**41),
        lambda d: d.update(compute_capability=9.0),
        lambda d: d.update(version_compatible=0),
        lambda d: d.update(gpu_name=["NVIDIA"]),
        lambda d: d.update(io="x"),
        lambda d: d["io"][0].update(shape=[True, 3, 8, 8]),
        lambda d: d["io"][0].update(shape=[-1, 3.5, 8, 8]),
        lambda d: d["io"][0].update(mode="sideways"),
        lambda d: d["profile"].update(x=[[1, 3, 8, 8], [2, 3, 8, 8]]),
        lambda d: d["profile"].update(x=[[1, 3, 8, 8], [2, 3, 8, 8], [1e300, 3, 8, 8]]),
        lambda d: d["graph"].update(batch_max=1e300),
        lambda d: d["graph"].update(target="everywhere"),
    ],
)
def test_manifest_fields_are_strict(tmp_path, change):
    d = _manifest_dict(tmp_path)
    change(d)
    path = manifest_path_for(tmp_path / "engine.plan")
    path.write_text(json.dumps(d))
    with pytest.raises(AmedError, match="engine.plan.json"):
        read_manifest(path)


def test_manifest_integral_float_is_accepted(tmp_path):
    d = _manifest_dict(tmp_path)
    d["plan_bytes"] = 4096.0
    path = manifest_path_for(tmp_path / "engine.plan")
    path.write_text(json.dumps(d))
    m = read_manifest(path)
    assert m.plan_bytes == 4096 and type(m.plan_bytes) is int


# --- target ------------------------------------------------------------------------------------------


def test_target_defaults_to_portable_and_round_trips(record):
    assert TARGETS == ("portable", "ort-cuda")
    d = copy.deepcopy(record)
    d.pop("target", None)  # a graph from before the field
    spec = parse(d)
    assert spec.target == "portable"
    assert spec.to_dict()["target"] == "portable"
    assert GraphSpec.from_json(spec.to_json()) == spec
    assert record.get("target") == "portable"  # the exporter writes it
    assert parse(put(record, ("target",), "ort-cuda")).target == "ort-cuda"


@pytest.mark.parametrize("value", ["ort", "", "PORTABLE", 1, None, ["portable"]], ids=repr)
def test_bad_target_is_refused(record, value):
    with pytest.raises(AmedError, match="target"):
        parse(put(record, ("target",), value))


def test_bad_target_is_refused_on_construction():
    with pytest.raises(AmedError, match="target"):
        GraphSpec("denoiser", "fp32", (1, 8, 8), 0, 1, 1, 1, target="gpu")


# --- NFE bound ---------------------------------------------------------------------------------------


def test_nfe_above_the_maximum_is_refused_by_create():
    with pytest.raises(AmedError, match=rf"NFE {MAX_NFE + 1} is above the maximum of {MAX_NFE}"):
        SamplerConfig.create("ipndm", MAX_NFE + 1, "polynomial", (0.002, 80.0), False)
    assert SamplerConfig.create("ipndm", MAX_NFE, "polynomial", (0.002, 80.0), False).num_points == MAX_NFE + 1


# --- metadata against the graph's real signature ---------------------------------------------------


def _with_metadata(src, dst, edit) -> None:
    model = onnx.load(src)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            d = json.loads(p.value)
            edit(d)
            p.value = json.dumps(d)
    onnx.save(model, dst)


@pytest.fixture(scope="module")
def static_onnx(distilled, tmp_path_factory):
    """The AMED graph exported with a static batch of 2."""
    from exporters.onnx_export import export_onnx

    network, sampler, *_ = distilled
    out = tmp_path_factory.mktemp("static") / "static2.onnx"
    export_onnx(network, out, sampler=sampler, batch=2, check=False)
    return out


def test_static_batch_graph_claiming_a_huge_range_is_refused(static_onnx, tmp_path, monkeypatch):
    assert Sampler.load(static_onnx, batch=2, device="cpu").batch == 2  # the honest graph loads
    path = tmp_path / "lying.onnx"
    _with_metadata(static_onnx, path, lambda d: d.update(batch_max=10**9))

    def no_allocation(*args, **kwargs):
        raise AssertionError("buffers were allocated before the signature check")

    monkeypatch.setattr("amed_deploy.runtime.onnx_executor.allocate", no_allocation)
    with pytest.raises(AmedError, match=r"metadata and graph disagree.*real shape \[2, 1, 16, 16\].*1000000000"):
        Sampler.load(path, batch=10**6, device="cpu")
    with pytest.raises(AmedError, match=r"real shape \[2, .*static batch 2"):
        Sampler.load(path, batch=3, device="cpu")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d.update(image_shape=[1, 32, 32]),
            r"'x' has shape \['batch', 1, 16, 16\], expected \[4, 1, 32, 32\]",
        ),
        (lambda d: d.update(image_shape=[3, 16, 16]), "metadata and graph disagree"),
        (lambda d: d.update(label_dim=10), r"'class_labels' has shape .*expected \[4, 10\]"),
        (lambda d: d.update(label_dim=0), r"graph inputs are .*class_labels.*metadata implies"),
        (lambda d: d.update(kind="denoiser"), r"graph outputs are \['a', 'c', 'denoised', 'r'\]"),
    ],
    ids=["resolution", "channels", "label_dim", "no labels", "kind"],
)
def test_metadata_disagreeing_with_the_graph_is_refused(amed_onnx, tmp_path, edit, message):
    path = tmp_path / "edited.onnx"
    _with_metadata(amed_onnx, path, edit)
    with pytest.raises(AmedError, match=message):
        Sampler.load(path, batch=4, device="cpu")


# --- memory --------------------------------------------------------------------------------------------


def test_huge_batch_is_refused_by_the_memory_check_before_allocating(amed_onnx, tmp_path, monkeypatch):
    path = tmp_path / "wide.onnx"
    _with_metadata(amed_onnx, path, lambda d: d.update(batch_max=10**9))
    spec = Sampler.load(path, batch=2, device="cpu").spec  # the dynamic graph itself is fine
    assert estimate_bytes(spec, 10**6) > available_bytes(torch.device("cpu"))  # else this test means nothing

    real_zeros = torch.zeros

    def small_zeros(*shape, **kwargs):
        size = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        assert math.prod(size) < 10**7, f"a large buffer {tuple(size)} was allocated before the memory check"
        return real_zeros(*shape, **kwargs)

    monkeypatch.setattr(torch, "zeros", small_zeros)
    start = time.perf_counter()
    with pytest.raises(AmedError, match=r"batch 1000000 needs about \d+\.\d [GT]iB \(buffers .* free on cpu"):
        Sampler.load(path, batch=10**6, device="cpu")
    assert time.perf_counter() - start < 5


def test_estimate_bytes_matches_a_hand_count():
    cfg = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)  # no history: max_order None
    spec = GraphSpec(
        "amed",
        "fp16",
        (3, 8, 8),
        10,
        1,
        2,
        4,
        sampler=cfg,
        afs_rca=(0.5, 1.0, 0.1),
        network={"activation_bytes_per_sample": 1000},
    )
    image = 3 * 3 * 8 * 8  # batch 3
    io = image * 2 * 2 + 3 * 4 * 2 + 3 * 10 * 4 + 3 * 3 * 4  # x, denoised fp16; sigmas; labels; r, c, a
    loop = (2 + 1 + 2) * image * 4  # noise, x and (max_order or 1) + 2 history tensors, fp32
    assert estimate_bytes(spec, 3) == io + loop + 3 * 1000 == 17004

    plain = GraphSpec("denoiser", "fp32", (3, 8, 8), 0, 1, 2, 4)  # no sampler, no activation record
    assert estimate_bytes(plain, 3) == image * 4 * 2 + 3 * 4 * 2 + (2 + 6) * image * 4 == 23064
    order2 = GraphSpec(
        "denoiser",
        "fp32",
        (3, 8, 8),
        0,
        1,
        2,
        4,
        sampler=SamplerConfig.create("ipndm", 5, "polynomial", (0.002, 80.0), False, options={"max_order": 2}),
    )
    assert estimate_bytes(order2, 3) == image * 4 * 2 + 3 * 4 * 2 + (2 + 4) * image * 4


def test_graph_spec_records_the_network_activations(distilled, monkeypatch):
    network, sampler, *_ = distilled
    shapes = feature_shapes(network.net)
    spec = graph_spec(network, sampler, "fp32", 1)
    assert spec.network["activation_bytes_per_sample"] == sum(c * h * w for c, h, w in shapes.values()) * 8

    def no_taps(net):
        raise AmedError("no feature taps")

    monkeypatch.setattr(amed_network, "feature_shapes", no_taps)
    assert "activation_bytes_per_sample" not in graph_spec(network, sampler, "fp32", 1).network
