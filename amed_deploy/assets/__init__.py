"""Files bundled with the package: the demo models and their predictors, also reachable by short names
(`fashion-mnist`, `amed5`, `amed_ipndm_uneven5`, `epd5`, ...) wherever a command takes a checkpoint or predictor.
Each predictor file is named after the solver its record says it was distilled for; a model other than the
default keeps its predictors in a folder of its own, their short names prefixed with the model's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import cifar10
from ..data import CLASS_NAMES

HERE = Path(__file__).parent
NFES = (3, 5, 7, 9)
# the solvers with bundled predictors, one file per NFE: the AMED-Solver, the AMED-Plugin on iPNDM with
# uneven-grid weights (named amed_ipndm before the published formula took that name), the published
# AMED-Plugin on iPNDM and on DPM-Solver++, and the tables of the EPD-Solver and of the EPD-Plugin on iPNDM
# (docs/RESULTS.md compares them)
BUNDLED_SOLVERS = ("amed", "amed_ipndm_uneven", "amed_ipndm", "amed_dpmpp", "epd", "epd_ipndm")


@dataclass(frozen=True)
class DemoModel:
    """A bundled checkpoint as `amed-deploy demo --model NAME` samples it: one grid row per class, with the
    AMED-Solver predictors distilled for it. `bundled` holds every predictor shipped for it (solver -> NFE
    -> file, in `folder`), known by `prefix` + the file's stem."""

    name: str
    file: Path
    class_names: tuple[str, ...]
    bundled: dict[str, dict[int, Path]] = field(default_factory=dict)
    title: str = ""
    folder: Path = HERE
    prefix: str = ""

    @property
    def predictors(self) -> dict[int, Path]:
        """The demo's: the AMED-Solver's files, by NFE."""
        return self.bundled.get("amed", {})


def bundled_model(
    name: str,
    file: Path,
    class_names: tuple[str, ...],
    title: str,
    folder: Path,
    prefix: str,
    shipped: dict[str, tuple[int, ...]] | None = None,
) -> DemoModel:
    """A model with one predictor file `<solver><NFE>.pt` in `folder` per solver and NFE it ships (`shipped`;
    default: every bundled solver at every NFE)."""
    shipped = {solver: NFES for solver in BUNDLED_SOLVERS} if shipped is None else shipped
    files = {solver: {nfe: folder / f"{solver}{nfe}.pt" for nfe in nfes} for solver, nfes in shipped.items()}
    return DemoModel(name, file, class_names, files, title, folder, prefix)


MODEL_NAME = "fashion-mnist"
DEFAULT_MODEL = bundled_model(
    MODEL_NAME,
    HERE / "fashion_mnist_edm.safetensors",
    CLASS_NAMES,
    "class-conditional EDM model, Fashion-MNIST 32x32 (10 classes)",
    HERE,
    "",
)
CIFAR10_MODEL = bundled_model(
    "cifar10",
    HERE / "cifar10" / "cifar10_edm.safetensors",
    cifar10.CLASS_NAMES,
    "class-conditional EDM model, CIFAR-10 32x32 RGB (10 classes)",
    HERE / "cifar10",
    "cifar10-",
    # the published learned solvers of docs/RESULTS.md's CIFAR-10 table
    {solver: NFES for solver in ("amed", "amed_ipndm", "epd", "epd_ipndm")},
)
DEMO_MODELS = {m.name: m for m in (DEFAULT_MODEL, CIFAR10_MODEL)}
# the default model's files, by the names the rest of the project uses
MODEL = DEFAULT_MODEL.file
BUNDLED = DEFAULT_MODEL.bundled
PREDICTORS = BUNDLED["amed"]  # the demo's
PLUGIN_PREDICTORS = BUNDLED["amed_ipndm_uneven"]


def names() -> dict[str, Path]:
    """Short name -> bundled file: each model, then its predictors."""
    files = {}
    for model in DEMO_MODELS.values():
        files[model.name] = model.file
        files.update({model.prefix + p.stem: p for by_nfe in model.bundled.values() for p in by_nfe.values()})
    return files


def model_of(path: Path) -> DemoModel | None:
    """The bundled model whose checkpoint `path` is, if any."""
    return next((m for m in DEMO_MODELS.values() if m.file == path), None)


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
