"""The ONNX Runtime CUDA target: ORT's own UNet fusions applied, the sampler record intact, refused
where it cannot run (TensorRT, the CPU provider), and the portable graph left as it was."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch
from click.testing import CliRunner

from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.metadata import METADATA_KEY, GraphSpec
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
    assert fused[(CONTRIB, "NhwcConv")] == portable[("ai.onnx", "Conv")]
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
def test_ort_graph_matches_the_fp32_reference_on_cuda(tmp_path):
    """Bundled model, NFE 5, same seeds: the ORT-CUDA fp16 graph is as close to PyTorch fp32 as the
    portable fp16 graph is (both are fp16; measured max abs errors are in docs/BENCHMARKS.md)."""
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
