"""Trace the U-Net, its feature tap and g_phi into ONE ONNX graph that carries the whole sampler
configuration in its metadata, then prove it: onnx.checker plus a parity run through ONNX Runtime.

Graph I/O is the contract of `amed_deploy.graph`. In fp16 graphs x and denoised are fp16 and the
network runs in fp16 with GroupNorm statistics and attention logits/softmax kept in fp32 (the network
code does this in either precision), while the EDM preconditioning, sigmas and the predictor stay
fp32: TensorRT 11 is strongly typed, so the precision must be in the graph itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import Tensor

from amed_deploy.amed_network import AMEDNetwork, DeployModule, graph_spec
from amed_deploy.config import SamplerConfig
from amed_deploy.errors import AmedError, first_line
from amed_deploy.files import atomic_write_bytes
from amed_deploy.graph import output_names
from amed_deploy.metadata import METADATA_KEY, TARGETS, GraphSpec
from amed_deploy.networks.layers import ort_cuda_formulation
from amed_deploy.parity import TOLERANCE, Reference, example_inputs, within

OPSET = 18


@dataclass
class ExportResult:
    path: Path
    spec: GraphSpec
    errors: dict[str, float]  # max abs error per output vs PyTorch fp32, measured through ONNX Runtime


def export_onnx(
    network: AMEDNetwork,
    out: str | os.PathLike,
    *,
    sampler: SamplerConfig | None,
    precision: str = "fp32",
    batch: int = 1,
    batch_range: tuple[int, int] | None = None,
    checkpoint_sha256: str | None = None,
    predictor_sha256: str | None = None,
    check: bool = True,
    overwrite: bool = True,
    target: str = "portable",
) -> ExportResult:
    """Export `network` (with or without predictor) to `out`; nothing is written unless every check
    passes. `batch_range=(min, max)` makes the batch dimension dynamic with `batch` as the optimum;
    `overwrite=False` refuses an existing `out` at the final, atomic rename.

    `target="ort-cuda"` traces and checks the fp32 portable graph, then rewrites it with ONNX Runtime's
    UNet tools into `precision` (`exporters.ort_cuda`); that graph runs only on ONNX Runtime's CUDA
    provider, so its own parity is checked on the GPU (tests marked gpu)."""
    if precision not in TOLERANCE:
        raise AmedError(f"precision must be fp32 or fp16, got {precision!r}")
    if target not in TARGETS:
        raise AmedError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    spec = graph_spec(network, sampler, precision, batch, batch_range, checkpoint_sha256, predictor_sha256)
    spec = dataclasses.replace(spec, producer={**spec.producer, "opset": OPSET}, target=target)
    # what is traced and checked on the CPU: the graph itself, or for ort-cuda the fp32 graph it is made from
    traced = spec if target == "portable" else dataclasses.replace(spec, precision="fp32", target="portable")
    dynamic = spec.batch_max > spec.batch_min
    module = DeployModule(network, traced.precision).cpu().requires_grad_(False).eval()
    example = example_inputs(traced, max(batch, 2) if dynamic else batch)
    # the ORT-CUDA graph spells some layers its own way (same values: layers.ort_cuda_formulation)
    with ort_cuda_formulation() if target == "ort-cuda" else contextlib.nullcontext():
        model = _trace(module, example, traced, dynamic)
    model.metadata_props.add(key=METADATA_KEY, value=traced.to_json())
    onnx.checker.check_model(model, full_check=True)
    errors: dict[str, float] = {}
    if check:
        errors = parity_errors(model.SerializeToString(), network, traced)
        bound = TOLERANCE[traced.precision]
        if not all(within(errors, bound).values()):
            raise AmedError(
                f"exported graph disagrees with PyTorch: max abs errors {errors} exceed {bound}; nothing written"
            )
    if target == "ort-cuda":
        from .ort_cuda import optimize_for_ort_cuda

        model, fused = optimize_for_ort_cuda(model, precision)
        if fused["GroupNorm"] + fused["SkipGroupNorm"] < fused["group_norms"]:
            raise AmedError(f"ONNX Runtime fused only part of the group norms ({fused}); nothing written")
        spec = dataclasses.replace(spec, producer={**spec.producer, "ort_fusions": fused})
        del model.metadata_props[:]
        model.metadata_props.add(key=METADATA_KEY, value=spec.to_json())
    atomic_write_bytes(out, model.SerializeToString(), overwrite=overwrite)
    return ExportResult(Path(out), spec, errors)


def _trace(module: DeployModule, example: dict[str, Tensor], spec: GraphSpec, dynamic: bool) -> onnx.ModelProto:
    names = list(example)
    dynamic_shapes = None
    if dynamic:
        b = torch.export.Dim("batch", min=spec.batch_min, max=spec.batch_max)
        dynamic_shapes = {name: {0: b} for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "graph.onnx")
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter
                _quiet_exporter_loggers()
                torch.onnx.export(
                    module,
                    tuple(example[n] for n in names),
                    path,
                    input_names=names,
                    output_names=output_names(spec),
                    dynamic_shapes=dynamic_shapes,
                    opset_version=OPSET,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
        except Exception as e:  # the exporter raises many types; report one line
            detail = f"{type(e).__name__}: {first_line(e)}"
            raise AmedError(f"ONNX export failed: {detail} (rerun with --debug for the log)") from e
        return onnx.load(path)


def _quiet_exporter_loggers() -> None:
    for name in ("torch.onnx", "onnx_ir", "onnxscript", "torch._dynamo", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)


def parity_errors(data: bytes, network: AMEDNetwork, spec: GraphSpec) -> dict[str, float]:
    """Max abs error of every output, ONNX Runtime (CPU) vs the fp32 PyTorch module, at several sigmas
    (`amed_deploy.parity`, shared with `amed-deploy check`). Non-finite outputs of either side are an
    error of their own, so nothing is written."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    try:
        reference = Reference.compute(network, spec, spec.batch_opt)
    except AmedError as e:
        raise AmedError(f"{e}; nothing written") from None
    names = output_names(spec)
    errors = reference.errors(
        lambda inputs: dict(zip(names, sess.run(names, {k: v.numpy() for k, v in inputs.items()})))
    )
    for name, v in errors.items():
        if not math.isfinite(v):
            raise AmedError(
                f"the exported graph's {name!r} output is NaN/inf on test inputs"
                + (" (fp16 overflow? export with --precision fp32)" if spec.precision == "fp16" else "")
                + "; nothing written"
            )
    return errors
