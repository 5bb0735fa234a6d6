"""Copy a trained model and its predictors into amed_deploy/assets/ (the bundled demo).

    python tools/bundle_demo_assets.py --model run/edm-fp16.safetensors --predictors run/pred/

The predictors were distilled against the fp32 EMA checkpoint (`edm.pt`); the bundle ships its
fp16 rounding (`edm-fp16.safetensors`, half the size). Each predictor is re-bound to the bundled
file's SHA-256 and records the checkpoint it was distilled against under
training["distilled_against_sha256"], so the binding stays honest and checkable.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from amed_deploy import assets
from amed_deploy.checkpoint import file_sha256
from amed_deploy.predictor_file import load_predictor, save_predictor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--predictors", required=True, type=Path, help="folder of amed{N}.pt / amed_ipndm{N}.pt")
    args = ap.parse_args()
    shutil.copyfile(args.model, assets.MODEL)
    sha = file_sha256(assets.MODEL)
    for src in sorted(args.predictors.glob("amed*.pt")):
        bundle = load_predictor(src, force=True)
        if bundle.checkpoint_sha256 != sha:
            bundle.training["distilled_against_sha256"] = bundle.checkpoint_sha256
            bundle.checkpoint_sha256 = sha
        save_predictor(assets.HERE / src.name, bundle)
        print(f"bundled {src.name}: {bundle.sampler.solver} NFE {bundle.sampler.nfe}")
    print(f"bundled {assets.MODEL.name} ({assets.MODEL.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]}...)")


if __name__ == "__main__":
    main()
