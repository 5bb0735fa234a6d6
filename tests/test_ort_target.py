"""The ONNX Runtime CUDA target: ORT's own UNet fusions applied, the sampler record intact, refused
where it cannot run (TensorRT, the CPU provider), and the portable graph left as it was."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import need_ort_cuda, tiny_net

from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.metadata import METADATA_KEY, GraphSpec
from amed_deploy.networks.layers import ort_cuda_formulation
from amed_deploy.runtime import Sampler
from exporters.onnx_export import export_onnx

CONTRIB = "com.microsoft"


def _ops(path) -> collections.Counter:
    return collections.Counter((n.domain or "ai.onnx", n.op_type) for n in onnx.load(path).graph.node)


@pytest.fixture(scope="module")
def ort_graph(tmp_path_factory, distilled):
    network, sampler, *_ = distilled
    out = tmp_path_factory.mktemp("ort") / "amed5-ort.onnx"
    result = export_onnx(
        network, out, sampler=sampler, precision="fp16", batch=4, batch_range=(1, 8), target="ort-cuda"
    )
    return out, result


def test_ort_target_fuses_every_group_norm_and_keeps_the_record(ort_graph, amed_onnx):
    path, result = ort_graph
    portable = _ops(amed_onnx)
    fused = _ops(path)
    norms = portable[("ai.onnx", "InstanceNormalization")]
    assert norms > 0 and fused[("ai.onnx", "InstanceNormalization")] == 0  # every one became a contrib op
    assert fused[(CONTRIB, "GroupNorm")] + fused[(CONTRIB, "SkipGroupNorm")] == norms
    depthwise = _depthwise_resampling(amed_onnx)
    assert fused[(CONTRIB, "NhwcConv")] == portable[("ai.onnx", "Conv")] - depthwise["Conv"]
    spec = GraphSpec.from_json({p.key: p.value for p in onnx.load(path).metadata_props}[METADATA_KEY])
    assert spec.target == "ort-cuda" and spec.precision == "fp16" and spec == result.spec
    assert (
        spec.sampler
        == GraphSpec.from_json({p.key: p.value for p in onnx.load(amed_onnx).metadata_props}[METADATA_KEY]).sampler
    )
    assert spec.producer["ort_fusions"]["group_norms"] == norms
    io = {v.name: v.type.tensor_type.elem_type for v in [*onnx.load(path).graph.input, *onnx.load(path).graph.output]}
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert io == {"x": half, "sigma": single, "sigma_next": single, "class_labels": single, "denoised": half,
                  "r": single, "c": single, "a": single}  # fmt: skip


def _depthwise_resampling(path) -> collections.Counter:
    """The box-filter resampling layers of a graph: depthwise (group > 1) Conv / ConvTranspose."""
    return collections.Counter(
        n.op_type
        for n in onnx.load(path).graph.node
        if n.op_type in ("Conv", "ConvTranspose") and any(a.name == "group" and a.i > 1 for a in n.attribute)
    )


class _Convolutions(torch.overrides.TorchFunctionMode):
    """Records (weight shape, groups) of every conv2d call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.conv2d, torch.nn.functional.conv2d):
            self.calls.append((tuple(args[1].shape), kwargs.get("groups", args[6] if len(args) > 6 else 1)))
        return func(*args, **kwargs)


def test_ort_cuda_formulation_changes_no_value():
    """Traced for ORT-CUDA, the network computes the same values with no depthwise (resampling)
    convolution left: box-filter resampling is pooled."""
    net = tiny_net(1)
    gen = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(3, 1, 16, 16, generator=gen), torch.tensor([0.1, 2.0, 40.0])
    labels = torch.eye(3)
    with torch.no_grad():
        with _Convolutions() as reference:
            want = net(x, sigma, labels)
        with ort_cuda_formulation(), _Convolutions() as convs:
            got = net(x, sigma, labels)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    assert any(groups > 1 for _, groups in reference.calls)
    assert [c for c in reference.calls if c[1] == 1] == convs.calls


def test_ort_target_resamples_by_resize_and_pooling_with_fp32_parity(ort_graph, amed_onnx):
    """ORT's CUDA depthwise ConvTranspose is slow, so the ORT graph spells the box filter as nearest
    Resize / AveragePool; the export's CPU parity check compared that fp32 graph with the network's
    reference (convolution) formulation, so the two formulations agree to fp32 rounding."""
    path, result = ort_graph
    depthwise, fused = _depthwise_resampling(amed_onnx), _ops(path)
    assert depthwise["ConvTranspose"] > 0 and depthwise["Conv"] > 0  # the portable graph is unchanged
    assert not _depthwise_resampling(path) and fused[("ai.onnx", "ConvTranspose")] == 0
    assert fused[("ai.onnx", "Resize")] == depthwise["ConvTranspose"]
    assert fused[("ai.onnx", "AveragePool")] == depthwise["Conv"]
    assert result.errors and max(result.errors.values()) <= 1e-4, result.errors
    model = onnx.load(path)  # Resize reads its scales on the host: straight from fp32 initializers, no Cast
    fp32 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert all(n.input[2] in fp32 for n in model.graph.node if n.op_type == "Resize")


def test_portable_graph_has_no_contrib_ops(amed_onnx):
    assert not [op for op in _ops(amed_onnx) if op[0] != "ai.onnx"]
    spec = GraphSpec.from_json({p.key: p.value for p in onnx.load(amed_onnx).metadata_props}[METADATA_KEY])
    assert spec.target == "portable"


def test_build_refuses_the_ort_graph_in_one_line(ort_graph, tmp_path):
    path, _ = ort_graph
    res = CliRunner().invoke(main, ["build", "--onnx", str(path), "--out", str(tmp_path / "a.plan")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "target ort-cuda" in lines[0] and "portable" in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_the_cpu_refuses_the_ort_graph_with_a_reason(ort_graph):
    path, _ = ort_graph
    with pytest.raises(AmedError, match="CUDA provider.*portable graph for the CPU"):
        Sampler.load(path, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ort_graph_matches_the_fp32_reference_on_cuda(tmp_path):
    """Bundled model, NFE 5, same seeds: the ORT-CUDA fp16 graph is as close to PyTorch fp32 as the
    portable fp16 graph is (both are fp16; measured max abs errors are in docs/BENCHMARKS.md)."""
    need_ort_cuda()
    from amed_deploy import assets
    from amed_deploy.sampling import load_model, reference_sample

    loaded = load_model(assets.MODEL, assets.PREDICTORS[5])
    classes = list(range(10)) + [0] * 6
    errors = {}
    for target in ("portable", "ort-cuda"):
        graph = tmp_path / f"{target}.onnx"
        export_onnx(loaded.network, graph, sampler=loaded.bundle.sampler, precision="fp16", batch=16, target=target)
        smp = Sampler.load(graph, device="cuda")
        errors[target] = max(
            (smp.sample(seed=s, classes=classes).images.cpu() - reference_sample(
                loaded.network, loaded.bundle.sampler, s, 16, classes)[0]).abs().max().item()
            for s in (0, 1)
        )  # fmt: skip
    assert errors["ort-cuda"] <= 1.5 * errors["portable"] and errors["ort-cuda"] < 0.05, errors


def test_ort_graph_is_type_consistent(ort_graph):
    """The CPU provider cannot run the contrib ops, but ONNX Runtime resolves the graph's types before
    looking for kernels: the only complaint must be the missing NhwcConv kernel (a duplicated name or a
    wrong type would fail first)."""
    import onnxruntime as ort

    path, _ = ort_graph
    with pytest.raises(Exception, match="NOT_IMPLEMENTED.*NhwcConv"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
