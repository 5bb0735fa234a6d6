"""The deployed runtime: `Sampler.load(path).sample(seeds=...)` over a TensorRT plan, an ONNX graph
or a PyTorch checkpoint, with preallocated buffers for a fixed (batch, NFE); `RequestBatcher` serves
single-image requests through one Sampler."""

from .batcher import Overloaded, RequestBatcher, RequestTimeout
from .sampler import SampleOutput, Sampler

__all__ = ["Overloaded", "RequestBatcher", "RequestTimeout", "SampleOutput", "Sampler"]
