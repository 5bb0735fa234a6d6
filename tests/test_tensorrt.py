"""TensorRT path: the no-TensorRT refusal and pure helpers run anywhere; building and running an engine
needs `import tensorrt` and a CUDA GPU (marked gpu + tensorrt, skipped otherwise)."""

from __future__ import annotations

import enum
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from amed_deploy.config import SamplerConfig
from amed_deploy.errors import AmedError
from amed_deploy.manifest import check_manifest, manifest_path_for, read_manifest
from amed_deploy.metadata import METADATA_KEY, GraphSpec, onnx_graph_spec
from amed_deploy.runtime.trt_executor import TRTExecutor
from exporters import trt_build
from exporters.trt_build import build_command_impl, build_engine, profile_shapes

NO_TRT = "TensorRT is not installed (pip install 'amed-deploy[tensorrt]'); these tests need `import tensorrt`"


def make_spec(precision: str, batch: tuple[int, int, int] = (1, 2, 4)) -> GraphSpec:
    cfg = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)
    return GraphSpec("amed", precision, (3, 8, 8), 0, *batch, sampler=cfg, afs_rca=(0.5, 1.0, 0.1))


def identity_onnx(path, spec: GraphSpec | None, precision: str = "fp32") -> None:
    """A hand-made ONNX with the graph's I/O names and types (not a real denoiser)."""
    image = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    ins = [
        vi("x", image, ["B", 3, 8, 8]),
        vi("sigma", TensorProto.FLOAT, ["B"]),
        vi("sigma_next", TensorProto.FLOAT, ["B"]),
    ]
    outs = [vi("denoised", image, ["B", 3, 8, 8])] + [vi(n, TensorProto.FLOAT, ["B", 1, 1, 1]) for n in ("r", "c", "a")]
    nodes = [
        helper.make_node("Identity", ["x"], ["denoised"]),
        helper.make_node(
            "Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [4], [-1, 1, 1, 1])
        ),
        helper.make_node("Reshape", ["sigma", "shape"], ["r"]),
        helper.make_node("Identity", ["r"], ["c"]),
        helper.make_node("Identity", ["r"], ["a"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs))
    if spec is not None:
        helper.set_model_props(model, {METADATA_KEY: spec.to_json()})
    onnx.save(model, str(path))


# ------------------------------------------------------------------ CPU: no TensorRT needed


def test_build_without_tensorrt_says_how_to_install_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # simulate absence even where it is installed
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AmedError) as err:
        # the ONNX does not even exist: the TensorRT check comes before any other work
        build_engine(tmp_path / "missing.onnx", out / "engine.plan", timing_cache=out / "cache.bin")
    msg = str(err.value)
    assert "TensorRT is not installed" in msg and "\n" not in msg
    assert "pip install 'amed-deploy[tensorrt]'" in msg and "pip install tensorrt-cu13" in msg
    assert list(out.iterdir()) == []


def test_onnx_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    identity_onnx(path, None)
    with pytest.raises(AmedError, match="has no amed-deploy metadata.*amed-deploy export"):
        onnx_graph_spec(path)


def test_onnx_graph_spec_reads_the_metadata(tmp_path):
    path = tmp_path / "g.onnx"
    identity_onnx(path, make_spec("fp32"))
    assert onnx_graph_spec(path) == make_spec("fp32")
    with pytest.raises(AmedError, match="not a readable ONNX"):
        (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
        onnx_graph_spec(tmp_path / "junk.onnx")


def test_profile_shapes_vary_only_the_batch():
    spec = make_spec("fp16")
    assert profile_shapes(spec) == [
        {
            "x": [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]],
            "sigma": [[1], [2], [4]],
            "sigma_next": [[1], [2], [4]],
        }
    ]
    assert profile_shapes(spec, batch_opt=4)[0]["sigma"] == [[1], [4], [4]]
    with pytest.raises(AmedError, match="outside"):
        profile_shapes(spec, batch_opt=8)


def test_executor_without_cuda_or_manifest_is_refused(tmp_path):
    with pytest.raises(AmedError):
        TRTExecutor.open(tmp_path / "engine.plan", batch=1, device="cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------ CPU: a fake of the TensorRT API surface we use
# It checks build_engine's own logic (flags per major version, profile, checks, what gets written); the real
# API is exercised by the GPU tests below.


def fake_tensorrt(
    version: str, fp32_engine: bool = False, parse_error: str | None = None, build_fails: bool = False
) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType = enum.Enum("DataType", "FLOAT HALF BF16 INT8 INT32 INT64 BOOL UINT8 FP8")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    flags = "STRONGLY_TYPED" if version.startswith("10.") else "PREFER_AOT_PYTHON_PLUGINS"
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags, start=0)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.BuilderFlag = enum.Enum("BuilderFlag", "VERSION_COMPATIBLE")
    trt.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel", "NONE AMPERE_PLUS SAME_COMPUTE_CAPABILITY")
    trt.OnnxParserFlag = enum.IntEnum("OnnxParserFlag", "NATIVE_INSTANCENORM", start=0)
    trt.DeviceType = enum.Enum("DeviceType", "GPU DLA")
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.calls = calls = {}

    class ILogger:
        Severity = enum.IntEnum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE", start=0)

        def __init__(self):
            pass

    class ITimingCache:
        def serialize(self):
            return b"timing"

    class IBuilderConfig:
        flags = ()
        DLA_core = -1
        default_device_type = trt.DeviceType.GPU
        num_optimization_profiles = 0

        def get_flag(self, flag):
            return flag in self.flags

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def add_optimization_profile(self, profile):
            calls["profile"] = profile._shapes
            self.num_optimization_profiles += 1
            return 0

        def set_flag(self, flag):
            self.flags = (*self.flags, flag)

        def create_timing_cache(self, data):
            calls["cache_in"] = data
            return ITimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return ITimingCache()

    class IOptimizationProfile:
        def __init__(self):
            self._shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self._shapes[name] = [list(lo), list(opt), list(hi)]

    class INetworkDefinition:
        def __init__(self):
            self._io = []

        num_inputs = property(lambda self: sum(t["mode"] == "input" for t in self._io))

        def get_input(self, i):
            t = [t for t in self._io if t["mode"] == "input"][i]
            return types.SimpleNamespace(
                name=t["name"], shape=tuple(t["shape"]), dtype=trt.DataType[t["dtype"]], is_shape_tensor=False
            )

        def __iter__(self):  # its layers: none of them with a precision set
            return iter(())

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return INetworkDefinition()

        create_builder_config = staticmethod(IBuilderConfig)
        create_optimization_profile = staticmethod(IOptimizationProfile)

        def build_serialized_network(self, network, config):
            if build_fails:
                return None
            return json.dumps({"io": network._io, "profile": calls["profile"]}).encode()

    class OnnxParser:
        num_errors = int(parse_error is not None)

        def __init__(self, network, logger):
            self._network = network

        def get_error(self, index):
            return parse_error

        @property
        def flags(self):
            return calls.get("parser_flags", 0)

        @flags.setter
        def flags(self, value):
            calls["parser_flags"] = value

        def parse_from_file(self, path):
            if parse_error is not None:
                return False
            g = onnx.load(path).graph
            for mode, values in (("input", g.input), ("output", g.output)):
                for v in values:
                    t = v.type.tensor_type
                    dtype = "FLOAT" if fp32_engine or t.elem_type == TensorProto.FLOAT else "HALF"
                    shape = [d.dim_value or -1 for d in t.shape.dim]
                    self._network._io.append({"name": v.name, "mode": mode, "dtype": dtype, "shape": shape})
            return True

    class ICudaEngine:
        def __init__(self, d):
            self._io, self._profile = d["io"], d["profile"]
            self.num_io_tensors = len(self._io)

        def _t(self, name):
            return next(t for t in self._io if t["name"] == name)

        def get_tensor_name(self, i):
            return self._io[i]["name"]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if self._t(name)["mode"] == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType[self._t(name)["dtype"]]

        def get_tensor_shape(self, name):
            return self._t(name)["shape"]

        def get_tensor_profile_shape(self, name, index):
            return self._profile[name]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return ICudaEngine(json.loads(data))

    classes = (ILogger, ITimingCache, IBuilderConfig, IOptimizationProfile, INetworkDefinition, Builder, OnnxParser)
    for cls in (*classes, ICudaEngine, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt


def install_fake(monkeypatch, trt: types.ModuleType) -> None:
    """Make `trt` the tensorrt module for our code and for Polygraphy, whose modules each hold a lazy
    import of tensorrt that keeps the first module it resolved."""
    import polygraphy.backend.trt  # noqa: F401  (loads the modules whose lazy imports are replaced)

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, module in list(sys.modules.items()):
        if name.startswith("polygraphy") and hasattr(getattr(module, "trt", None), "is_installed"):
            monkeypatch.setattr(module, "trt", trt)


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(trt_build, "gpu_identity", lambda device: ("NVIDIA H100 80GB HBM3", "9.0"))


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_with_fake_tensorrt_writes_plan_manifest_and_cache(tmp_path, monkeypatch, fake_gpu, version, precision):
    trt = fake_tensorrt(version)
    install_fake(monkeypatch, trt)
    onnx_path, plan = tmp_path / "g.onnx", tmp_path / "out" / "g.plan"
    identity_onnx(onnx_path, make_spec(precision), precision)
    (tmp_path / "cache").write_bytes(b"old")
    m = build_engine(onnx_path, plan, workspace_gib=0.5, timing_cache=tmp_path / "cache", batch_opt=3)
    assert trt.calls["network_flags"] == (1 << 0 if version.startswith("10.") else 0)
    assert trt.calls["parser_flags"] == 1 << int(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    assert trt.calls["workspace"] == 1 << 29 and trt.calls["cache_in"] == b"old"
    assert trt.calls["profile"]["x"] == [[1, 3, 8, 8], [3, 3, 8, 8], [4, 3, 8, 8]]
    assert (tmp_path / "cache").read_bytes() == b"timing"
    assert read_manifest(manifest_path_for(plan)) == m
    assert m.spec.batch_opt == 3 and m.tensorrt_version == version and m.compute_capability == "9.0"
    image = "float16" if precision == "fp16" else "float32"
    assert {t["name"]: t["dtype"] for t in m.io}["denoised"] == image
    check_manifest(plan, m, version, "NVIDIA H100 80GB HBM3", "9.0")


def test_silently_fp32_engine_is_refused_and_nothing_written(tmp_path, monkeypatch, fake_gpu):
    install_fake(monkeypatch, fake_tensorrt("11.4.0.106", fp32_engine=True))
    identity_onnx(tmp_path / "g.onnx", make_spec("fp16"), "fp16")
    out = tmp_path / "out"
    with pytest.raises(AmedError, match="'x' is float32, the fp16 graph needs float16"):
        build_engine(tmp_path / "g.onnx", out / "g.plan", timing_cache=out / "cache")
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("fake", "match"),
    [
        ({"parse_error": "node /enc/conv: unsupported"}, "could not build .*g.onnx: Could not parse ONNX correctly"),
        ({"build_fails": True}, "could not build .*g.onnx: Invalid Engine"),
    ],
)
def test_tensorrt_failure_is_one_error_line_and_nothing_written(tmp_path, monkeypatch, fake_gpu, capsys, fake, match):
    install_fake(monkeypatch, fake_tensorrt("11.4.0.106", **fake))
    identity_onnx(tmp_path / "g.onnx", make_spec("fp32"))
    out = tmp_path / "out"
    with pytest.raises(AmedError, match=match) as e:
        build_engine(tmp_path / "g.onnx", out / "g.plan", timing_cache=out / "cache")
    assert "\n" not in str(e.value)
    assert not out.exists() or list(out.iterdir()) == []
    if "parse_error" in fake:  # TensorRT's own reason is shown above the error line
        shown = capsys.readouterr()
        assert fake["parse_error"] in shown.out + shown.err


def test_build_refuses_bad_options_before_building(tmp_path, monkeypatch, fake_gpu):
    install_fake(monkeypatch, fake_tensorrt("10.16.1.11"))
    identity_onnx(tmp_path / "g.onnx", make_spec("fp32"))
    for kwargs, match in [
        ({"hardware_compatibility": "any"}, "hardware compatibility"),
        ({"workspace_gib": 0}, "workspace"),
        ({"builder_optimization_level": 7}, "optimization level"),
        ({"batch_opt": 9}, "outside"),
    ]:
        with pytest.raises(AmedError, match=match):
            build_engine(tmp_path / "g.onnx", tmp_path / "g.plan", **kwargs)
    with pytest.raises(AmedError, match="overwrite"):
        build_engine(tmp_path / "g.onnx", tmp_path / "g.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


# ------------------------------------------------------------------ GPU + TensorRT


@pytest.fixture(scope="module")
def trt():
    mod = pytest.importorskip("tensorrt", reason=NO_TRT)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return mod


class Tiny(nn.Module):
    """Denoiser-shaped toy: image path in the graph's precision, sigma math and r/c/a in fp32."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1).to(dtype)

    def forward(self, x, sigma, sigma_next):
        s = sigma.reshape(-1, 1, 1, 1)
        denoised = (x.float() / (s * s + 1)).to(x.dtype) + self.conv(x)
        feat = denoised.float().mean(dim=(1, 2, 3), keepdim=True)
        c = (sigma_next / sigma).reshape(-1, 1, 1, 1) + 0.5 * feat
        return denoised, torch.sigmoid(feat), c, torch.tanh(feat)


def tiny_onnx(path, precision: str) -> None:
    torch.manual_seed(0)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = Tiny(dtype).eval()
    example = (torch.randn(2, 3, 8, 8, dtype=dtype), torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5]))
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=True,
        input_names=["x", "sigma", "sigma_next"],
        output_names=["denoised", "r", "c", "a"],
        dynamic_shapes={"x": {0: batch}, "sigma": {0: batch}, "sigma_next": {0: batch}},
    )
    proto = onnx.load(str(path))
    helper.set_model_props(proto, {METADATA_KEY: make_spec(precision).to_json()})
    onnx.save(proto, str(path))


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def built(trt, tmp_path_factory, request):
    folder = tmp_path_factory.mktemp(request.param)
    onnx_path, plan = folder / "tiny.onnx", folder / "tiny.plan"
    tiny_onnx(onnx_path, request.param)
    summary = build_command_impl(onnx_path, plan, workspace_gib=1.0, timing_cache=folder / "timing.cache")
    return request.param, onnx_path, plan, summary


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_matches_onnxruntime(built):
    import onnxruntime as ort

    precision, onnx_path, plan, summary = built
    assert "tiny.plan" in summary and precision in summary
    assert (plan.parent / "timing.cache").stat().st_size > 0
    m = read_manifest(manifest_path_for(plan))
    image = "float16" if precision == "fp16" else "float32"
    dtypes = {t["name"]: t["dtype"] for t in m.io}
    assert dtypes == {"x": image, "denoised": image, "sigma": "float32", "sigma_next": "float32"} | {
        n: "float32" for n in ("r", "c", "a")
    }
    assert m.spec == make_spec(precision) and m.profile["x"] == [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]]

    ex = TRTExecutor.open(plan, batch=3)
    assert ex.inputs["x"].dtype == ex.outputs["denoised"].dtype == getattr(torch, image)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=g).to(ex.inputs["x"].dtype)
    sigma, sigma_next = torch.tensor([80.0, 7.0, 1.3]), torch.tensor([7.0, 1.3, 0.002])
    for name, value in (("x", x), ("sigma", sigma), ("sigma_next", sigma_next)):
        ex.inputs[name].copy_(value)
    ex.run()
    torch.cuda.synchronize()

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    sess = ort.InferenceSession(str(onnx_path), providers=providers)
    ref = sess.run(
        ["denoised", "r", "c", "a"], {"x": x.numpy(), "sigma": sigma.numpy(), "sigma_next": sigma_next.numpy()}
    )
    tol = 2e-2 if precision == "fp16" else 3e-3  # fp32 convolutions may run in TF32 (on by default)
    for name, expected in zip(("denoised", "r", "c", "a"), ref, strict=True):
        got = ex.outputs[name].float().cpu().numpy()
        np.testing.assert_allclose(got, expected.astype(np.float32), atol=tol, rtol=tol, err_msg=name)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_batch_outside_profile_is_refused(built, tmp_path):
    _, onnx_path, plan, _ = built
    for batch in (0, 5):
        with pytest.raises(AmedError, match="outside"):
            TRTExecutor.open(plan, batch=batch)
    with pytest.raises(AmedError, match="outside"):
        build_engine(onnx_path, tmp_path / "x.plan", batch_opt=9)
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tampered_plan_is_refused_before_deserialising(built, tmp_path):
    _, _, plan, _ = built
    copy = tmp_path / "copy.plan"
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    manifest_path_for(copy).write_bytes(manifest_path_for(plan).read_bytes())
    with pytest.raises(AmedError, match="manifest does not match plan"):
        TRTExecutor.open(copy, batch=2)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_build_refuses_onnx_without_metadata(trt, tmp_path):
    identity_onnx(tmp_path / "plain.onnx", None)
    with pytest.raises(AmedError, match="has no amed-deploy metadata"):
        build_engine(tmp_path / "plain.onnx", tmp_path / "plain.plan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]
