"""Bind predictor files to a model's hash (checkpoint.format.model_sha256) instead of only its file's sha256.

    python tools/relabel_predictors.py                      # the bundled predictors and model
    python tools/relabel_predictors.py --model edm.pt run/pred/amed5.pt ...

Each file is read with torch.load(weights_only=True), gains the `model_sha256` field and is written
back with everything else (weights, sampler, checkpoint_sha256 as provenance, training record)
exactly as it was; the state dicts are then checked to be bit-identical and the file to load against
the model. Idempotent: a file that already carries the model's hash is left alone. The predictors
must already be bound to the model (their checkpoint_sha256 is its file's hash), unless --force.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

from amed_deploy import assets
from amed_deploy.checkpoint.format import model_sha256
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.errors import AmedError
from amed_deploy.files import atomic_write_bytes, file_sha256
from amed_deploy.predictor_file import FORMAT, FORMAT_VERSION, load_predictor
from amed_deploy.records import check_stamp


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (torch.equal alone would call -0.0 == 0.0 and NaN != NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def relabel(path: Path, model_hash: str, file_hash: str, force: bool = False) -> bool:
    """Add `model_hash` to one predictor file; True if it was rewritten. Raises AmedError on a
    file bound to another checkpoint (without `force`) or if the rewrite changed anything else."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise AmedError(f"{path} is not an amed-deploy predictor file")
    check_stamp(payload, FORMAT, FORMAT_VERSION, str(path), "an amed-deploy predictor file")
    if payload.get("model_sha256") == model_hash:
        return False
    if payload.get("checkpoint_sha256") != file_hash and not force:
        raise AmedError(
            f"{path} is bound to checkpoint file {str(payload.get('checkpoint_sha256'))[:12]}..., not this model's "
            f"file {file_hash[:12]}...; pass --force to bind it anyway"
        )
    before = {k: v.clone() for k, v in payload["state_dict"].items()}
    rest = {k: v for k, v in payload.items() if k not in ("state_dict", "model_sha256")}
    payload["model_sha256"] = model_hash
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())

    after = torch.load(path, map_location="cpu", weights_only=True)
    weights = after["state_dict"]
    same_weights = list(weights) == list(before) and all(_same_bits(weights[k], before[k]) for k in before)
    if not same_weights or {k: v for k, v in after.items() if k not in ("state_dict", "model_sha256")} != rest:
        raise AmedError(f"{path}: the rewritten file differs from the original beyond model_sha256")
    load_predictor(path, model_sha256=model_hash)  # the binding now checks by model hash
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictors", nargs="*", type=Path, help="predictor files (default: the bundled amed*.pt)")
    ap.add_argument("--model", type=Path, default=assets.MODEL, help="checkpoint they belong to (default: bundled)")
    ap.add_argument("--force", action="store_true", help="bind files whose checkpoint_sha256 is another file's")
    args = ap.parse_args(argv)
    files = args.predictors or sorted(assets.HERE.glob("amed*.pt"))
    try:
        model_hash = model_sha256(load_checkpoint(args.model, dtype=None))
        file_hash = file_sha256(args.model)
        for path in files:
            changed = relabel(path, model_hash, file_hash, args.force)
            print(f"{path.name}: {'bound to' if changed else 'already bound to'} model sha256 {model_hash[:12]}...")
    except AmedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
