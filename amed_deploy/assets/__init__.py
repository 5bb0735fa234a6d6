"""Files bundled with the package: the demo model and its predictors, also reachable by short names
(`fashion-mnist`, `amed5`, `amed_ipndm_uneven5`, ...) wherever a command takes a checkpoint or predictor.
Each predictor file is named after the solver its record says it was distilled for."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
MODEL = HERE / "fashion_mnist_edm.safetensors"
NFES = (3, 5, 7, 9)
PREDICTORS = {nfe: HERE / f"amed{nfe}.pt" for nfe in NFES}  # AMED-Solver
# AMED-Plugin on iPNDM with the uneven-grid weights (amed_ipndm_uneven; named amed_ipndm before #17)
PLUGIN_PREDICTORS = {nfe: HERE / f"amed_ipndm_uneven{nfe}.pt" for nfe in NFES}
MODEL_NAME = "fashion-mnist"


def names() -> dict[str, Path]:
    """Short name -> bundled file, model first."""
    files = {MODEL_NAME: MODEL}
    files.update({p.stem: p for p in (*PREDICTORS.values(), *PLUGIN_PREDICTORS.values())})
    return files


def resolve(name: str | Path) -> Path:
    """An existing file (or any path-like name) as given; otherwise a bundled file's short name."""
    path = Path(name)
    if path.exists() or str(name) not in names():
        return path
    return names()[str(name)]


def missing() -> list[str]:
    """Names of bundled files not present in this build."""
    return [p.name for p in (MODEL, PREDICTORS[5]) if not p.exists()]
