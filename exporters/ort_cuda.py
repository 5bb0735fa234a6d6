"""The ONNX Runtime CUDA target: the fp32 graph (traced with box resampling as Resize/AveragePool,
`layers.ort_cuda_formulation`) rewritten with ONNX Runtime's own UNet tools
(`onnxruntime.transformers`): GroupNorm(+SiLU) fused into its channels-last contrib op, convolutions
in NHWC, bias and attention fusions, applied to the fp32 portable graph, then ORT's fp16 converter
(softmax kept in fp32; the fused GroupNorm accumulates its statistics in fp32 itself; fusing the fp16
portable graph instead, with its fp32 Casts, gave type-inconsistent graphs). The result runs only on ONNX
Runtime's CUDA provider (contrib ops), so its metadata says target "ort-cuda" and `build` refuses it.

Our own code does what ONNX Runtime's tools need and do not do themselves: the group norm pattern
must reshape back with `Shape(input)`, while a static-shape export writes the shape as a constant
(`_shape_from_input`); a constant graph output needs its own node (`_constant_outputs_through_identity`);
and the converter's fp32-to-fp32 Casts before host-side inputs are dropped (`_drop_identity_casts`)."""

from __future__ import annotations

import collections
import logging

import onnx
from onnx import helper

from amed_deploy.graph import IMAGE_IO

FP32_OPS = ["Softmax"]  # kept in fp32 by the fp16 conversion (blocking more made the converter repeat names)


def _shape_from_input(model: onnx.ModelProto) -> int:
    """Reshape(InstanceNorm(Reshape(x)), const) -> Reshape(InstanceNorm(Reshape(x)), Shape(x)): in a
    static-shape export the constant is x's own shape, which the fusion wants to see spelled as Shape(x)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    rewired, new_nodes = 0, []
    for norm in (n for n in graph.node if n.op_type == "InstanceNormalization"):
        first = producer.get(norm.input[0])
        after = consumers.get(norm.output[0], [])
        if first is None or first.op_type != "Reshape" or len(after) != 1 or after[0].op_type != "Reshape":
            continue
        back = after[0]
        if back.input[1] not in inits:
            continue
        shape_node = helper.make_node("Shape", [first.input[0]], [f"{back.name}_shape"], name=f"{back.name}_Shape")
        new_nodes.append((back, shape_node))
        back.input[1] = shape_node.output[0]
        rewired += 1
    for back, shape_node in new_nodes:
        graph.node.insert(list(graph.node).index(back), shape_node)
    return rewired


def _constant_outputs_through_identity(model: onnx.ModelProto) -> None:
    """A graph output that is an initializer (g_phi's `a` when its time scale is fixed) gets an Identity
    node: ORT's fp16 converter otherwise defines that name twice (initializer and its output Cast)."""
    inits = {i.name: i for i in model.graph.initializer}
    for output in model.graph.output:
        if output.name in inits:
            inits[output.name].name = f"{output.name}_constant"
            model.graph.node.append(
                helper.make_node("Identity", [f"{output.name}_constant"], [output.name], name=f"{output.name}_Identity")
            )


def _drop_identity_casts(model: onnx.ModelProto) -> None:
    """Remove Casts of fp32 initializers to fp32 (ORT's fp16 converter adds them before inputs that
    must stay fp32, such as Resize's scales, one per consumer under one name). On the GPU such a Cast
    feeds a CPU-side input through a device-to-host copy, which made the graph uncapturable."""
    graph = model.graph
    fp32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    outputs = {o.name for o in graph.output}
    to_float = [
        n for n in graph.node
        if n.op_type == "Cast" and n.input[0] in fp32 and n.output[0] not in outputs
        and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)
    ]  # fmt: skip
    renamed = {n.output[0]: n.input[0] for n in to_float}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    for node in to_float:
        graph.node.remove(node)


def optimize_for_ort_cuda(model: onnx.ModelProto, precision: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The fp32 portable graph -> the ORT-CUDA graph in `precision`; returns it and its fused-op counts."""
    from onnxruntime.transformers import fusion_options, optimizer

    model = onnx.ModelProto.FromString(model.SerializeToString())
    metadata = list(model.metadata_props)
    norms = sum(n.op_type == "InstanceNormalization" for n in model.graph.node)
    _shape_from_input(model)
    _constant_outputs_through_identity(model)
    options = fusion_options.FusionOptions("unet")
    logging.disable(logging.WARNING)  # its fusion passes warn about shape inference they do not need here
    try:
        optimized = optimizer.optimize_model(model, model_type="unet", opt_level=0, optimization_options=options)
        if precision == "fp16":
            graph = optimized.model.graph
            io_fp32 = [v.name for v in [*graph.input, *graph.output] if v.name not in IMAGE_IO]
            optimized.convert_float_to_float16(keep_io_types=io_fp32, op_block_list=FP32_OPS)
            _drop_identity_casts(optimized.model)
    finally:
        logging.disable(logging.NOTSET)
    out = optimized.model
    del out.metadata_props[:]
    out.metadata_props.extend(metadata)
    counts = collections.Counter(n.op_type for n in out.graph.node)
    return out, {"group_norms": norms, **{k: counts[k] for k in ("GroupNorm", "SkipGroupNorm", "NhwcConv")}}
