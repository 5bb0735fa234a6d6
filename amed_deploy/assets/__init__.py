"""Files bundled with the package: the demo model and its predictors, also reachable by short names
(`fashion-mnist`, `amed5`, `amed_ipndm_uneven5`, `epd5`, ...) wherever a command takes a checkpoint or predictor.
Each predictor file is named after the solver its record says it was distilled for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import CLASS_NAMES

HERE = Path(__file__).parent
MODEL = HERE / "fashion_mnist_edm.safetensors"
NFES = (3, 5, 7, 9)
# the solvers with bundled predictors, one file per NFE: the AMED-Solver, the AMED-Plugin on iPNDM with
# uneven-grid weights (named amed_ipndm before the published formula took that name), the published
# AMED-Plugin on iPNDM and on DPM-Solver++, and the tables of the EPD-Solver and of the EPD-Plugin on iPNDM
# (docs/RESULTS.md compares them)
BUNDLED_SOLVERS = ("amed", "amed_ipndm_uneven", "amed_ipndm", "amed_dpmpp", "epd", "epd_ipndm")
BUNDLED = {solver: {nfe: HERE / f"{solver}{nfe}.pt" for nfe in NFES} for solver in BUNDLED_SOLVERS}
PREDICTORS = BUNDLED["amed"]  # the demo's
PLUGIN_PREDICTORS = BUNDLED["amed_ipndm_uneven"]
MODEL_NAME = "fashion-mnist"


@dataclass(frozen=True)
class DemoModel:
    """A bundled checkpoint as `amed-deploy demo --model NAME` samples it: one grid row per class, with the
    AMED-Solver predictors distilled for it."""

    name: str
    file: Path
    class_names: tuple[str, ...]
    predictors: dict[int, Path]


DEMO_MODELS = {MODEL_NAME: DemoModel(MODEL_NAME, MODEL, CLASS_NAMES, PREDICTORS)}


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


def missing(model: str = MODEL_NAME) -> list[str]:
    """Names of the bundled files a demo model needs that are not present in this build."""
    demo = DEMO_MODELS[model]
    return [p.name for p in (demo.file, demo.predictors[5]) if not p.exists()]
