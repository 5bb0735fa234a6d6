"""`make demo`: the bundled Fashion-MNIST model, its NFE-5 AMED graph exported once and run with
ONNX Runtime on the CPU, written as a labelled grid (one row per class)."""

from __future__ import annotations

import time
from pathlib import Path

from . import assets
from .checkpoint import file_sha256
from .data import CLASS_NAMES
from .errors import AmedError
from .images import grid, save_png
from .metadata import GraphSpec

COLUMNS = 6


def demo_graph(folder: Path, nfe: int = 5) -> Path:
    """Export the bundled model + predictor (batch one row per class), reusing a matching export."""
    from .runtime.onnx_executor import open_session, read_spec

    out = folder / f"demo-amed{nfe}.onnx"
    model_sha, pred = file_sha256(assets.MODEL), assets.PREDICTORS[nfe]
    if out.exists():
        try:
            spec: GraphSpec = read_spec(open_session(out), str(out))
            if spec.checkpoint_sha256 == model_sha and spec.predictor_sha256 == file_sha256(pred):
                return out
        except AmedError:
            pass  # stale or damaged: export again
    from exporters.onnx_export import export_onnx

    from .sampling import load_model

    loaded = load_model(assets.MODEL, pred)
    export_onnx(
        loaded.network,
        out,
        sampler=loaded.bundle.sampler,
        batch=len(CLASS_NAMES) * COLUMNS,
        checkpoint_sha256=model_sha,
        predictor_sha256=file_sha256(pred),
    )
    return out


def run_demo(out: Path, folder: Path = Path("engines"), seed: int = 0) -> dict:
    """Returns timings and paths; writes `out` atomically."""
    from .runtime import Sampler

    missing = assets.missing()
    if missing:
        raise AmedError(f"the bundled demo files are missing from this installation: {', '.join(missing)}")
    t0 = time.perf_counter()
    graph = demo_graph(folder)
    t1 = time.perf_counter()
    sampler = Sampler.load(graph, device="cpu")
    classes = [c for c in range(len(CLASS_NAMES)) for _ in range(COLUMNS)]
    result = sampler.sample(seed=seed, classes=classes)
    t2 = time.perf_counter()
    save_png(grid(result.images, ncol=COLUMNS, row_labels=CLASS_NAMES, scale=3), out)
    return {"graph": graph, "out": out, "export_s": t1 - t0, "sample_s": t2 - t1, "config": sampler.config}
