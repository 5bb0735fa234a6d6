"""Files bundled with the package: the demo model and its predictors, also reachable by short names
(`fashion-mnist`, `amed5`, `amed_ipndm_uneven5`, ...) wherever a command takes a checkpoint or predictor.
Each predictor file is named after the solver its record says it was distilled for."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
MODEL = HERE / "fashion_mnist_edm.safetensors"
NFES = (3, 5, 7, 9)
# the solvers with bundled predictors, one file per NFE: the AMED-Solver, the AMED-Plugin on iPNDM with
# uneven-grid weights (named amed_ipndm before the published formula took that name), the published
# AMED-Plugin on iPNDM and on DPM-Solver++ (docs/RESULTS.md compares them)
BUNDLED_SOLVERS = ("amed", "amed_ipndm_uneven", "amed_ipndm", "amed_dpmpp")
BUNDLED = {solver: {nfe: HERE / f"{solver}{nfe}.pt" for nfe in NFES} for solver in BUNDLED_SOLVERS}
PREDICTORS = BUNDLED["amed"]  # the demo's
PLUGIN_PREDICTORS = BUNDLED["amed_ipndm_uneven"]
MODEL_NAME = "fashion-mnist"


def names() -> dict[str, Path]:
    """Short name -> bundled file, model first."""
    files = {MODEL_NAME: MODEL}
    files.update({p.stem: p for by_nfe in BUNDLED.values() for p in by_nfe.values()})
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
