"""`make demo`: a bundled model (default Fashion-MNIST; `--model` picks another), its NFE-5 AMED graph
exported once and run with ONNX Runtime on the CPU, written as a labelled grid (one row per class).

The exported graph is cached in the project's own `engines/` folder (a source checkout) or else in
the user's cache folder, never in the directory the command runs from; a cached graph is reused
only if it is exactly the graph the demo would export now, and rebuilt if it is anything else."""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import assets
from .assets import DemoModel
from .errors import AmedError
from .files import file_sha256
from .images import grid, save_image

COLUMNS = 6
PROJECT_ENGINES = Path(__file__).resolve().parent.parent / "engines"


def cache_folder() -> Path:
    """engines/ of a source checkout when writable, else $XDG_CACHE_HOME/amed-deploy (~/.cache)."""
    if (PROJECT_ENGINES / "README.md").is_file() and os.access(PROJECT_ENGINES, os.W_OK):
        return PROJECT_ENGINES
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amed-deploy"


def batch_of(model: DemoModel) -> int:
    """The demo's grid: COLUMNS samples of every class, in one call."""
    return len(model.class_names) * COLUMNS


def _cached_graph_matches(path: Path, model_sha: str, predictor_sha: str, nfe: int, batch: int) -> bool:
    """True only for the graph this demo would export now; unreadable or different -> False."""
    from .runtime.onnx_executor import open_session, read_spec

    try:
        spec = read_spec(open_session(path), str(path))
    except (AmedError, OSError):
        return False
    return (
        spec.kind == "amed"
        and spec.precision == "fp32"
        and spec.target == "portable"
        and spec.batch_min == spec.batch_max == batch
        and spec.sampler is not None
        and spec.sampler.nfe == nfe
        and spec.checkpoint_sha256 == model_sha
        and spec.predictor_sha256 == predictor_sha
    )


def demo_graph(folder: Path | None = None, nfe: int = 5, model: DemoModel = assets.DEFAULT_MODEL) -> Path:
    """Export a bundled model + predictor (batch one row per class), reusing a matching export."""
    from exporters.onnx_export import export_onnx

    from .sampling import load_model

    folder = cache_folder() if folder is None else folder
    out = folder / f"demo-{model.name}-amed{nfe}.onnx"
    pred = model.predictors[nfe]
    loaded = load_model(model.file, pred)
    predictor_sha = file_sha256(pred)
    if out.is_file() and _cached_graph_matches(out, loaded.checkpoint_sha256, predictor_sha, nfe, batch_of(model)):
        return out
    export_onnx(
        loaded.network,
        out,
        sampler=loaded.bundle.sampler,
        batch=batch_of(model),
        checkpoint_sha256=loaded.checkpoint_sha256,
        predictor_sha256=predictor_sha,
    )
    return out


def run_demo(
    out: Path, folder: Path | None = None, seed: int = 0, overwrite: bool = False, model: str = assets.MODEL_NAME
) -> dict:
    """Returns timings and paths; writes `out` atomically (replacing it only with `overwrite`)."""
    from .runtime import Sampler

    if model not in assets.DEMO_MODELS:
        raise AmedError(f"unknown demo model {model!r}; bundled: {', '.join(assets.DEMO_MODELS)}")
    missing = assets.missing(model)
    if missing:
        raise AmedError(f"the bundled demo files are missing from this installation: {', '.join(missing)}")
    demo = assets.DEMO_MODELS[model]
    t0 = time.perf_counter()
    graph = demo_graph(folder, model=demo)
    t1 = time.perf_counter()
    sampler = Sampler.load(graph, device="cpu")
    classes = [c for c in range(len(demo.class_names)) for _ in range(COLUMNS)]
    result = sampler.sample(seed=seed, classes=classes)
    t2 = time.perf_counter()
    save_image(grid(result.images, ncol=COLUMNS, row_labels=demo.class_names, scale=3), out, overwrite=overwrite)
    return {"graph": graph, "out": out, "export_s": t1 - t0, "sample_s": t2 - t1, "config": sampler.config}
