"""The deployed runtime: `Sampler.load(path).sample(seed=...)` over a TensorRT plan, an ONNX graph
or a PyTorch checkpoint, with preallocated buffers for a fixed (batch, NFE)."""

from .sampler import SampleOutput, Sampler

__all__ = ["SampleOutput", "Sampler"]
