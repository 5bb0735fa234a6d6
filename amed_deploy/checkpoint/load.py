"""Loading any checkpoint the tool accepts: the file's first bytes pick our format's reader
(:mod:`.format`) or the safe EDM snapshot loader (:mod:`.edm_pickle`)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import torch

from amed_deploy.checkpoint.edm_pickle import load_edm_snapshot
from amed_deploy.checkpoint.format import ZIP_MAGIC, Checkpoint, parse_dtype, read_checkpoint
from amed_deploy.errors import AmedError
from amed_deploy.files import check_input_file

__all__ = ["load_checkpoint"]

# torch.save's legacy (non-zip) format starts with this pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _sniff(path: Path) -> str:
    """'pt', 'safetensors', 'pickle' or '' from the first bytes; the suffix decides only when content cannot."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
        return "pt"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and n < (100 << 20):  # JSON header (possibly truncated)
            return "safetensors"
    if head[:1] == b"\x80" and len(head) >= 2 and 2 <= head[1] <= 5:
        return "pickle"
    return {".pt": "pt", ".pth": "pt", ".safetensors": "safetensors", ".pkl": "pickle"}.get(path.suffix.lower(), "")


def load_checkpoint(path: str | os.PathLike, *, dtype: str | torch.dtype | None = torch.float32) -> Checkpoint:
    """Load an amed-deploy ``.pt``/``.safetensors`` file or an official EDM snapshot ``.pkl``.

    The kind is detected from the content (the suffix only breaks ties). Floating tensors are cast to
    `dtype` (fp32 by default, undoing fp16 storage); ``dtype=None`` keeps them as stored.
    """
    path = Path(path)
    what = str(path)
    want = parse_dtype(dtype)
    check_input_file(path, "a checkpoint file")
    kind = _sniff(path)
    if kind in ("pt", "safetensors"):
        ckpt = read_checkpoint(path, kind)
    elif kind == "pickle":
        ckpt = load_edm_snapshot(path)
    else:
        raise AmedError(
            f"{what}: unrecognised file (expected an amed-deploy .pt/.safetensors checkpoint or an EDM snapshot .pkl)"
        )
    if want is not None:
        ckpt.state_dict = {
            k: (t.to(want) if t.is_floating_point() and t.dtype != want else t) for k, t in ckpt.state_dict.items()
        }
    return ckpt
