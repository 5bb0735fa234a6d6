"""Copy a trained model and its predictors into amed_deploy/assets/ (a bundled demo model).

    python tools/bundle_demo_assets.py --model run/edm-fp16.safetensors --predictors run/pred/ [--name cifar10]

`--name` picks the entry of assets.DEMO_MODELS (default: the Fashion-MNIST model), which says where its
checkpoint and predictors go.

The predictors were distilled against the fp32 EMA checkpoint (`edm.pt`); the bundle ships its
fp16 rounding (`edm-fp16.safetensors`, half the size), which is a (slightly) different model. Each
predictor is bundled as `<solver><NFE>.pt` after the solver its record names (a file written before
#17 as amed_ipndm<N>.pt holds the formula now called amed_ipndm_uneven, and is bundled under that
name), and re-bound to the bundled model: its model_sha256 and file sha256 become the bundled
model's, and the originals are recorded under training["distilled_against_model_sha256"] /
["distilled_against_sha256"], so the binding stays honest and checkable. To only add model hashes
to predictors already bound to a file, use tools/relabel_predictors.py.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from amed_deploy import assets
from amed_deploy.checkpoint.format import model_sha256
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.files import file_sha256
from amed_deploy.predictor_file import load_predictor, save_predictor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--predictors", required=True, type=Path, help="folder of predictor files (amed*.pt, epd*.pt)")
    ap.add_argument("--name", default=assets.MODEL_NAME, choices=list(assets.DEMO_MODELS), help="the bundled model")
    args = ap.parse_args()
    target = assets.DEMO_MODELS[args.name]
    target.folder.mkdir(parents=True, exist_ok=True)
    if not (target.file.exists() and args.model.samefile(target.file)):  # re-binding the bundled model's own
        shutil.copyfile(args.model, target.file)
    sha = file_sha256(target.file)
    model_hash = model_sha256(load_checkpoint(target.file, dtype=None))
    for src in sorted([*args.predictors.glob("amed*.pt"), *args.predictors.glob("epd*.pt")]):
        bundle = load_predictor(src, allow_mismatch=True)
        if bundle.checkpoint_sha256 != sha:
            bundle.training["distilled_against_sha256"] = bundle.checkpoint_sha256
            bundle.checkpoint_sha256 = sha
        if bundle.model_sha256 is not None and bundle.model_sha256 != model_hash:
            bundle.training["distilled_against_model_sha256"] = bundle.model_sha256
        bundle.model_sha256 = model_hash
        name = f"{bundle.sampler.solver}{bundle.sampler.nfe}.pt"
        if name != src.name:
            bundle.training["relabelled"] = f"{src.name} -> {name} (named after the solver its record names)"
        save_predictor(target.folder / name, bundle)
        print(f"bundled {src.name} as {name}: {bundle.sampler.solver} NFE {bundle.sampler.nfe}")
    print(
        f"bundled {target.file.name} ({target.file.stat().st_size / 1e6:.1f} MB, file sha256 {sha[:12]}..., "
        f"model sha256 {model_hash[:12]}...)"
    )


if __name__ == "__main__":
    main()
