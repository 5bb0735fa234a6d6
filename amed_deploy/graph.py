"""The graph contract: the tensors an exported graph exchanges, by name, shape and dtype, derived from
its GraphSpec alone. The exporter names the graph's inputs and outputs from it, the builder checks
engines against it, and every executor sizes and types its buffers from it, so the three cannot drift.

x [B,C,H,W], sigma [B], sigma_next [B], class_labels [B,L] (conditional models only) -> denoised
[B,C,H,W] and, for kind 'amed', r, c, a [B,1,1,1]. x and denoised carry the graph's precision;
every other tensor is fp32 (preconditioning, sigmas and the predictor always run in fp32)."""

from __future__ import annotations

import torch

from .metadata import GraphSpec

X, SIGMA, SIGMA_NEXT, LABELS = "x", "sigma", "sigma_next", "class_labels"
DENOISED, R, C, A = "denoised", "r", "c", "a"
PREDICTOR_OUTPUTS = (R, C, A)
IMAGE_IO = (X, DENOISED)  # the tensors in the graph's precision

# A graph precision (metadata.PRECISIONS) -> the dtype of its images and of its U-Net's weights.
PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def image_dtype(spec: GraphSpec) -> torch.dtype:
    """The dtype of x and denoised."""
    return PRECISION_DTYPES[spec.precision]


def io_dtype(spec: GraphSpec, name: str) -> torch.dtype:
    """The dtype of one graph tensor: the image dtype for x and denoised, fp32 for all others."""
    return image_dtype(spec) if name in IMAGE_IO else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """The name manifests record for a dtype: torch's own attribute name ('float16', 'bfloat16')."""
    return str(dtype).removeprefix("torch.")


def output_names(spec: GraphSpec) -> list[str]:
    """The graph's outputs in order (the order the network returns them)."""
    return [DENOISED, *(PREDICTOR_OUTPUTS if spec.kind == "amed" else ())]


def io_shapes(spec: GraphSpec, batch: int) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Input and output shapes of a graph for one batch size, in the graph's I/O order."""
    c, h, w = spec.image_shape
    inputs: dict[str, tuple[int, ...]] = {X: (batch, c, h, w), SIGMA: (batch,), SIGMA_NEXT: (batch,)}
    if spec.conditional:
        inputs[LABELS] = (batch, spec.label_dim)
    outputs = {name: (batch, c, h, w) if name == DENOISED else (batch, 1, 1, 1) for name in output_names(spec)}
    return inputs, outputs
