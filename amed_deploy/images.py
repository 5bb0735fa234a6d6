"""Sample images out: PNG/JPEG grids (optionally one labelled row per class) and raw arrays (.npz)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from .data import from_model_space
from .files import atomic_write_bytes
from .outputs import IMAGE_FORMATS, check_suffix


def to_uint8(images: Tensor) -> np.ndarray:
    """[B,C,H,W] in [-1,1] -> uint8 [B,H,W,C], quantised as FID sees them."""
    return from_model_space(images).permute(0, 2, 3, 1).contiguous().numpy()


def grid(
    images: Tensor, ncol: int | None = None, row_labels: Sequence[str] | None = None, scale: int = 1
) -> Image.Image:
    """Tile a batch into one image; with row_labels, a caption column on the left of each row."""
    pix = to_uint8(images)
    b, h, w, c = pix.shape
    ncol = ncol or int(np.ceil(np.sqrt(b)))
    nrow = int(np.ceil(b / ncol))
    canvas = np.zeros((nrow * h, ncol * w, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, ncol)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = pix[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas).convert("RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if not row_labels:
        return img
    margin = 8 + 7 * max(len(s) for s in row_labels)
    out = Image.new("RGB", (img.width + margin, img.height), "white")
    out.paste(img, (margin, 0))
    draw = ImageDraw.Draw(out)
    row_h = img.height / nrow
    for r, text in enumerate(row_labels[:nrow]):
        draw.text((4, int(r * row_h + row_h / 2 - 6)), text, fill="black")
    return out


def save_image(img: Image.Image, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """PNG or JPEG, as the file name says (anything else is refused, never PNG bytes under another name)."""
    suffix = check_suffix(Path(path), tuple(IMAGE_FORMATS), "image file")
    buf = io.BytesIO()
    fmt = IMAGE_FORMATS[suffix]
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def save_npz(path: str | os.PathLike, *, overwrite: bool = True, **arrays: np.ndarray) -> None:
    check_suffix(Path(path), (".npz",), "array file")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)
