"""Bulk generation (`amed-deploy generate`): one image per seed, laid out as EDM's generate.py writes them
(DIR/000000/000123.png, folders of 1000 seeds) or as .npz shards, resumable, and data-parallel under
torchrun: each process (rank) samples a disjoint, deterministic share of the seeds on its own device.
Since every image is drawn from its own seed (`noise.make_inputs`), the union of the ranks' images is
what one process writes, image for image, whatever the batch."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .errors import AmedError, first_line
from .files import atomic_write_bytes
from .images import save_npz, to_uint8
from .noise import seed_batches
from .outputs import GENERATE_FORMATS as FORMATS
from .runtime import Sampler

RECORD = "generate.json"  # what made the images of a folder: a resumed run must be the same


def png_path(out: Path, seed: int) -> Path:
    """EDM's layout: seed 123 -> out/000000/000123.png."""
    return out / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"


def shard_path(out: Path, first_seed: int) -> Path:
    return out / f"shard-{first_seed:06d}.npz"


def done_seeds(out: Path, fmt: str, seeds: Sequence[int]) -> set[int]:
    """The seeds whose images are already written. Every file is written atomically (complete or absent),
    so a file that exists is complete."""
    if fmt == "png":
        return {s for s in seeds if png_path(out, s).is_file()}
    done: set[int] = set()
    for shard in out.glob("shard-*.npz"):
        try:
            with np.load(shard) as arrays:
                done.update(int(s) for s in arrays["seeds"])
        except (OSError, ValueError, KeyError) as e:  # not one this command wrote (its writes are atomic)
            raise AmedError(f"{shard} is not a readable shard ({first_line(e, 120)}): move it out of {out}") from None
    return done.intersection(seeds)


def check_record(out: Path, record: dict, write: bool) -> None:
    """Refuse to add images to a folder that holds another run's; `write`: record this run's (rank 0)."""
    path = out / RECORD
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise AmedError(f"{path} is unreadable ({e}); choose another --out") from None
        differs = sorted(k for k in {*old, *record} if old.get(k) != record.get(k))
        if differs:
            raise AmedError(f"{out} holds images of another run ({', '.join(differs)} differ): choose another --out")
    elif write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(record, indent=1).encode(), overwrite=False)


def write_images(out: Path, fmt: str, seeds: Sequence[int], images: torch.Tensor, labels: torch.Tensor | None) -> None:
    pix = to_uint8(images.cpu())
    if fmt == "npz":
        arrays = {"images": pix, "seeds": np.asarray(seeds, dtype=np.uint64)}
        if labels is not None:
            arrays["labels"] = labels.argmax(dim=1).cpu().numpy()
        save_npz(shard_path(out, seeds[0]), overwrite=False, **arrays)
        return
    for seed, img in zip(seeds, pix, strict=True):
        path = png_path(out, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue(), overwrite=False)


def _written(pending: tuple[Future, int]) -> int:
    """Wait for a call's files (raising what the write raised); its image count."""
    pending[0].result()
    return pending[1]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    def device(self, device: torch.device) -> torch.device:
        """The rank's device: under torchrun, its own GPU (LOCAL_RANK) when CUDA is asked for without an index."""
        if device.type == "cuda" and device.index is None and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def share(self, seeds: Sequence[int]) -> list[int]:
        """Every world-th seed from the rank's own: disjoint, and together all of them."""
        return list(seeds[self.rank :: self.world])


def start_group(ranks: Ranks, device: torch.device) -> None:
    """torch.distributed over the launch: NCCL between GPUs, gloo between CPU processes."""
    if ranks.world == 1:
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def end_group(ranks: Ranks) -> None:
    if ranks.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def totals(ranks: Ranks, device: torch.device, made: int, skipped: int, seconds: float) -> tuple[int, int, float]:
    """(images made, skipped, slowest rank's seconds) over every rank."""
    if ranks.world == 1:
        return made, skipped, seconds
    counts = torch.tensor([made, skipped], dtype=torch.float64, device=device)
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(counts)
    torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
    return int(counts[0]), int(counts[1]), float(slowest[0])


def generate(
    sampler: Sampler,
    seeds: Sequence[int],
    out: Path,
    fmt: str,
    classes: int | None = None,
    progress: bool = True,
) -> tuple[int, int, float]:
    """Write the image of every seed not yet written, in calls of the sampler's batch (the last padded);
    returns (images made, images skipped, seconds)."""
    if fmt not in FORMATS:
        raise AmedError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    done = done_seeds(out, fmt, seeds)
    todo = [s for s in seeds if s not in done]
    start = time.perf_counter()
    # One writer thread: a call's files are encoded and written while the device samples the next call
    # (compression releases the GIL); at most one call waits to be written.
    with (
        ThreadPoolExecutor(1, thread_name_prefix="write") as writer,
        tqdm(total=len(todo), desc="generate", unit="img", disable=not progress) as bar,
    ):
        pending: tuple[Future, int] | None = None  # the call being written, and its image count
        for chunk in seed_batches(todo, sampler.batch):
            result = sampler.sample(seeds=chunk, classes=classes)
            if pending is not None:
                bar.update(_written(pending))
            pending = writer.submit(write_images, out, fmt, chunk, result.images, result.labels), len(chunk)
        if pending is not None:
            bar.update(_written(pending))
    return len(todo), len(done), time.perf_counter() - start
