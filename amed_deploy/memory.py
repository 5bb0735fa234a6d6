"""Will a batch fit? Checked before any buffer is allocated, so that a batch too large for the machine
(or a record claiming a huge batch range) is one clear error rather than an OOM kill or a CUDA
out-of-memory trace half-way through setting up."""

from __future__ import annotations

import math
import os

import torch

from .errors import AmedError
from .graph import X, io_dtype, io_shapes
from .metadata import GraphSpec

NO_SAMPLER_HISTORY = 6  # image-sized tensors a solver chosen at load time keeps (max_order 4 + 2)
ACTIVATION_KEY = "activation_bytes_per_sample"  # GraphSpec.network: recorded by graph_spec


def buffer_bytes(spec: GraphSpec, batch: int) -> int:
    """The executor's I/O buffers plus the sampler loop's own state (noise, x, slope/history tensors)."""
    ins, outs = io_shapes(spec, batch)
    total = sum(math.prod(shape) * io_dtype(spec, name).itemsize for name, shape in [*ins.items(), *outs.items()])
    history = NO_SAMPLER_HISTORY if spec.sampler is None else (spec.sampler.max_order or 1) + 2
    image = math.prod(ins[X])
    return total + (2 + history) * image * torch.float32.itemsize  # 2: the noise buffer and x


def activation_bytes(spec: GraphSpec, batch: int) -> int:
    """The network's live activations, as estimated at export (0 for graphs that do not record it)."""
    per_sample = spec.network.get(ACTIVATION_KEY, 0)
    return int(per_sample) * batch if isinstance(per_sample, int) and not isinstance(per_sample, bool) else 0


def estimate_bytes(spec: GraphSpec, batch: int) -> int:
    """Bytes one Sampler of this graph at `batch` needs: buffers, loop state and activations."""
    return buffer_bytes(spec, batch) + activation_bytes(spec, batch)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (None when it cannot be told, and then nothing is checked)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # blocks torch's caching allocator holds but does not use are free for our buffers too
        return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_fits(spec: GraphSpec, batch: int, device: torch.device) -> None:
    """Refuse, before allocating, a batch whose estimate exceeds the device's free memory."""
    device = torch.device(device)
    free = available_bytes(device)
    if free is None:
        return
    buffers, activations = buffer_bytes(spec, batch), activation_bytes(spec, batch)
    need = buffers + activations
    if need > free:
        raise AmedError(
            f"batch {batch} needs about {format_bytes(need)} (buffers {format_bytes(buffers)} + activations "
            f"{format_bytes(activations)}), but only {format_bytes(free)} is free on {device}; use a smaller --batch"
        )


def format_bytes(n: int) -> str:
    """'21.3 GiB', or TiB from 1 TiB up (a refused batch may need petabytes)."""
    gib = n / 2**30
    return f"{gib / 1024:.1f} TiB" if gib >= 1024 else f"{gib:.1f} GiB"
