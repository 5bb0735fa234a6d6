"""Plots of a table run (FID vs NFE) and of trajectory PCA, drawn with matplotlib: an optional
dependency (the `eval` extra), asked for only when a plot is."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np

from ..errors import AmedError
from ..files import atomic_write_bytes
from ..solvers import display_name
from .pca import TrajectoryPCA

INSTALL_HINT = "pip install 'amed-deploy[eval]'"


def require_matplotlib() -> None:
    """Refuse a plot before any work when matplotlib is missing: one clear error saying how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AmedError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from None


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float | None]]],
    png_path: str | os.PathLike,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    hlines: dict[str, float] | None = None,
    xticks: Sequence[float] | None = None,
) -> None:
    """Draw named (x, y) lines (None / non-finite points skipped) and dashed horizontal lines to a PNG,
    written atomically."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.subplots()
    for name, (xs, ys) in series.items():
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if log_y:
            pts = [(x, y) for x, y in pts if y > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    for name, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="black", linewidth=1, label=name)
    if log_y:
        ax.set_yscale("log")
    if xticks is not None:
        ax.set_xticks(list(xticks))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(png_path, buf.getvalue())


def plot_fid_vs_nfe(results: dict, png_path: str | os.PathLike) -> None:
    """FID against NFE, one line per solver (log scale), the reference sampler's FID dashed."""
    cells = results.get("cells", [])
    series = {}
    for s in dict.fromkeys(c["solver"] for c in cells):
        pts = sorted((c["nfe"], c.get("fid")) for c in cells if c["solver"] == s)
        series[display_name(s)] = ([p[0] for p in pts], [p[1] for p in pts])
    hlines = {}
    ref = results.get("reference")
    if ref and ref.get("fid") is not None:
        hlines[f"{display_name(ref['solver'])} NFE {ref['nfe']}"] = ref["fid"]
    nfes = sorted({c["nfe"] for c in cells})
    where = f" ({results['device_name']})" if results.get("device_name") else ""
    line_chart(series, png_path, f"FID vs NFE{where}", "NFE", "FID", True, hlines, nfes)


def plot_pca(pcas: dict[str, TrajectoryPCA | dict], png_path: str | os.PathLike) -> None:
    """Variance left unexplained by the top k principal components (log scale), one line per PCA
    (e.g. raw and scaled states): the faster it falls, the closer trajectories are to a k-dim subspace."""
    series, n_traj, n_points = {}, 0, 0
    for name, pca in pcas.items():
        d = pca.to_dict() if isinstance(pca, TrajectoryPCA) else pca
        left = 1 - np.cumsum(np.asarray(d["mean_ratio"]))
        ks = list(range(1, len(left)))  # the last point is 0 up to rounding
        series[name] = (ks, np.maximum(left[:-1], 1e-16).tolist())
        n_traj, n_points = d["n_traj"], d["n_points"]
    title = f"PCA of {n_traj} sampling trajectories ({n_points} points, Heun)"
    line_chart(series, png_path, title, "top k components", "variance not explained", True, None, ks)
