"""Files bundled with the package: the demo model and its predictors."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
MODEL = HERE / "fashion_mnist_edm.safetensors"
PREDICTORS = {nfe: HERE / f"amed{nfe}.pt" for nfe in (3, 5, 7, 9)}  # AMED-Solver
PLUGIN_PREDICTORS = {nfe: HERE / f"amed_ipndm{nfe}.pt" for nfe in (3, 5, 7, 9)}  # AMED-Plugin on iPNDM


def missing() -> list[str]:
    """Names of bundled files not present in this build."""
    return [p.name for p in (MODEL, PREDICTORS[5]) if not p.exists()]
