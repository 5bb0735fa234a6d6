"""The solver x NFE table behind `amed-deploy eval`: plan every cell, measure FID and RMSE cell by cell
into a results JSON that is rewritten after each one, so a run cut short resumes where it stopped.

Baseline cells (training-free solvers) use the polynomial (EDM, rho = 7) schedule without AFS, except
that a solver costing 2 evaluations per interval (Heun, DPM-Solver-2, midpoint) can only spend an even
NFE; at an odd NFE it gets the analytical first step (AFS), which saves one evaluation:
NFE = 2(N - 1) - 1. AMED cells use the configuration their predictor was distilled for.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..amed_network import AMEDNetwork
from ..config import SamplerConfig, sigma_range
from ..errors import AmedError
from ..files import atomic_write_bytes
from ..predictor_file import load_predictor
from ..sampling import baseline_sampler
from ..solvers import display_name, evaluations_for, get_solver, make_schedule, nfe_for, solver_names
from .quality import ReferenceCache, fid_of, rmse_to_reference
from .report import format_value


def edm_reference_sampler(net: torch.nn.Module, num_points: int = 18) -> SamplerConfig:
    """EDM's own sampler, the quality reference row: Heun on 18 polynomial points plus a last Euler
    step from sigma_min to 0 (Heun skips its correction there): 2 * 18 - 1 = 35 NFE."""
    lo, hi = sigma_range(net)
    steps = (*make_schedule("polynomial", num_points, lo, hi), 0.0)
    nfe = nfe_for("heun", len(steps), ends_at_zero=True)
    return SamplerConfig("heun", nfe, len(steps), "polynomial", lo, hi, False, 7.0, steps)


def baseline_afs(solver: str, nfe: int) -> bool:
    """AFS for a training-free solver at this NFE: only where it is what makes the NFE reachable,
    i.e. a 2-evaluations-per-interval solver (Heun, DPM-Solver-2) at an odd NFE."""
    return get_solver(solver).evals_per_interval == 2 and nfe % 2 == 1


def predictor_templates() -> list[str]:
    """The default predictor file names: `<solver>{nfe}.pt` for every AMED solver (what `distill` writes)."""
    return [f"{name}{{nfe}}.pt" for name in solver_names(uses_predictor=True)]


def default_solvers(predictors: dict[tuple[str, int], Path]) -> list[str]:
    """Every training-free solver, then the AMED solvers a predictor file was found for (registry order)."""
    have = {solver for solver, _ in predictors}
    return solver_names(uses_predictor=False) + [s for s in solver_names(uses_predictor=True) if s in have]


def find_predictors(
    templates: Iterable[str], nfes: Iterable[int], folder: str | os.PathLike | None = None
) -> dict[tuple[str, int], Path]:
    """(solver, nfe) -> predictor file, from name templates with '{nfe}' (relative to `folder`).

    Files that do not exist are left out; the solver is the one recorded in each file, whatever its name
    says (a file named amed_ipndm5.pt by a version before #17 holds amed_ipndm_uneven). Two files for one
    (solver, nfe) are refused: which one is measured must not depend on the order of the templates."""
    found: dict[tuple[str, int], Path] = {}
    for template in templates:
        if "{nfe}" not in template:
            raise AmedError(f"predictor template {template!r} has no '{{nfe}}' placeholder")
        for nfe in nfes:
            path = Path(template.format(nfe=nfe))
            if folder is not None and not path.is_absolute():
                path = Path(folder) / path
            if not path.is_file():
                continue
            key = (load_predictor(path).sampler.solver, nfe)
            if key in found and found[key].resolve() != path.resolve():
                raise AmedError(
                    f"two predictor files for {key[0]} NFE {nfe}: {found[key]} and {path}; "
                    "pass --predictors naming one of them"
                )
            found[key] = path
    return found


def _misnamed(solver: str, nfe: int, predictors: dict[tuple[str, int], Path]) -> str:
    """Files found for this NFE whose name says `solver` but whose record says another solver."""
    return "; ".join(
        f"{path} was distilled for {other} ({display_name(other)}), not {solver}: the formulas differ"
        for (other, found_nfe), path in predictors.items()
        if found_nfe == nfe and other != solver and path.stem == f"{solver}{nfe}"
    )


@dataclass
class Cell:
    """One (solver, NFE) entry of the table: its sampler and network, or why it cannot run."""

    solver: str
    nfe: int
    cfg: SamplerConfig | None = None
    network: AMEDNetwork | None = None
    predictor: str | None = None
    note: str | None = None

    def record(self) -> dict:
        cfg = self.cfg
        return {
            "solver": self.solver,
            "nfe": self.nfe,
            "schedule": cfg.schedule if cfg else None,
            "afs": cfg.afs if cfg else None,
            "num_points": cfg.num_points if cfg else None,
            "evaluations": evaluations_for(self.solver, cfg.num_points, cfg.afs) if cfg else None,
            "predictor": self.predictor,
            "note": self.note,
        }


def plan_cells(
    network: AMEDNetwork,
    checkpoint_sha256: str | None,
    solvers: Sequence[str],
    nfes: Sequence[int],
    predictors: dict[tuple[str, int], Path],
    device: torch.device | str = "cpu",
    allow_mismatch: bool = False,
) -> list[Cell]:
    """Every (solver, NFE) cell: baselines from `baseline_sampler`, AMED cells from their predictor
    (verified against the checkpoint like `load_model`; the U-Net is shared, not reloaded)."""
    cells = []
    for solver in solvers:
        spec = get_solver(solver)
        name = spec.name
        for nfe in nfes:
            if spec.uses_predictor:
                path = predictors.get((name, nfe))
                if path is None:
                    why = _misnamed(name, nfe, predictors)
                    cells.append(
                        Cell(name, nfe, note=f"no {name} predictor for NFE {nfe}" + (f" ({why})" if why else ""))
                    )
                    continue
                bundle = load_predictor(path, model_sha256=checkpoint_sha256, allow_mismatch=allow_mismatch)
                if bundle.sampler.nfe != nfe:
                    cells.append(Cell(name, nfe, note=f"{path} is for NFE {bundle.sampler.nfe}"))
                    continue
                if bundle.sampler.solver != name:  # a mapping not made by find_predictors
                    note = f"{path} was distilled for {bundle.sampler.solver}, not {name}: the formulas differ"
                    cells.append(Cell(name, nfe, note=note))
                    continue
                net = AMEDNetwork(network.net, bundle.predictor.to(device), bundle.tap)
                cells.append(Cell(name, nfe, bundle.sampler, net, str(path)))
                continue
            try:
                cfg = baseline_sampler(network.net, name, nfe, "polynomial", baseline_afs(name, nfe))
            except AmedError as e:
                cells.append(Cell(name, nfe, note=str(e)))
                continue
            cells.append(Cell(name, nfe, cfg, network))
    return cells


def device_name(device: torch.device | str) -> str:
    """The GPU model (results name it), or the device type."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return str(dev)


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Atomically write a JSON document."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def evaluate_cells(
    network: AMEDNetwork,
    cells: list[Cell],
    num: int,
    batch: int,
    seed: int,
    device: torch.device | str,
    stats: tuple[np.ndarray, np.ndarray] | None,
    inception=None,
    resize: str = "tf",
    rmse_num: int = 256,
    reference: ReferenceCache | None = None,
    reference_fid: bool = True,
    out: str | os.PathLike | None = None,
    header: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
    fd_method: str = "sqrtm",
) -> dict:
    """Fill in FID (when `stats` is given) and RMSE for every cell, plus the reference sampler's FID.

    With `out`, the results JSON is rewritten atomically after every cell, so a run cut short keeps
    what it measured; `resume` keeps cells of an earlier run with the same settings and skips them
    (and any other keys that run stored, such as a PCA record). Past `deadline` (a time.perf_counter()
    value) no new cell starts: the rest are recorded as not reached and `complete` is False."""
    start_time = time.perf_counter()
    reference = reference or ReferenceCache()
    settings = {
        "num": num,
        "seed": seed,
        "batch": batch,
        "rmse_num": rmse_num,
        "fid": stats is not None,
        "resize": resize,
        "fd_method": fd_method,
        "inception_sha256": getattr(inception, "sha256", None),
        "reference": reference.describe(),
    }
    results = {
        **(header or {}),
        "device": str(device),
        "device_name": device_name(device),
        "settings": settings,
        "rmse_reference": {**reference.describe(), "num": rmse_num},
        "cells": [],
        "reference": None,
        "reference_fid": None,
        "seconds": 0.0,
    }
    done: dict[tuple[str, int], dict] = {}
    previous_seconds = 0.0
    if resume and out is not None and Path(out).is_file():
        try:
            old = json.loads(Path(out).read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("settings") == settings:
            done = {(c["solver"], c["nfe"]): c for c in old.get("cells", []) if c.get("note") is None}
            results["reference"], results["reference_fid"] = old.get("reference"), old.get("reference_fid")
            previous_seconds = float(old.get("seconds") or 0.0)
            results.update({k: v for k, v in old.items() if k not in results and k != "complete"})
            log(f"resuming: {len(done)} cells already measured in {out}")

    def save() -> None:
        results["seconds"] = previous_seconds + time.perf_counter() - start_time
        if out is not None:
            write_json(out, results)

    for cell in cells:
        key = (cell.solver, cell.nfe)
        if key in done:
            results["cells"].append(done[key])
            continue
        rec = {**cell.record(), "fid": None, "rmse": None, "num": None, "seconds": None}
        if cell.cfg is not None and deadline is not None and time.perf_counter() > deadline:
            rec["note"] = "not reached (time budget); run again with resume"
            results["cells"].append(rec)
            continue
        if cell.cfg is not None:
            t0 = time.perf_counter()
            if stats is not None:
                rec["fid"] = fid_of(
                    cell.network, cell.cfg, num, stats, inception, batch, seed, device, resize, progress, fd_method
                )
                rec["num"] = num
            if rmse_num > 0:
                cfgs, nets = {"cell": cell.cfg}, {"cell": cell.network}
                rec["rmse"] = rmse_to_reference(
                    network, cfgs, rmse_num, batch, seed, device, cache=reference, networks=nets
                )["cell"]
            rec["seconds"] = time.perf_counter() - t0
            fid, rmse = format_value(rec["fid"], ".3f"), format_value(rec["rmse"], ".4g")
            log(f"{cell.solver} NFE {cell.nfe}: FID {fid}, RMSE {rmse}")
        else:
            log(f"{cell.solver} NFE {cell.nfe}: skipped ({cell.note})")
        results["cells"].append(rec)
        save()

    out_of_time = deadline is not None and time.perf_counter() > deadline
    if reference_fid and stats is not None and results["reference_fid"] is None and not out_of_time:
        cfg = edm_reference_sampler(network.net)
        fid = fid_of(network, cfg, num, stats, inception, batch, seed, device, resize, progress, fd_method)
        points = cfg.num_points - 1  # the last time point is the final step's 0
        results["reference"] = {"solver": "heun", "nfe": cfg.nfe, "num_points": points, "fid": fid, "num": num}
        results["reference"]["note"] = "EDM's sampler: Heun on 18 polynomial points, then one Euler step to 0"
        results["reference_fid"] = fid
        log(f"reference: Heun NFE {cfg.nfe} ({points} points + final step to 0): FID {fid:.3f}")
    reached = not any("time budget" in (c.get("note") or "") for c in results["cells"])
    results["complete"] = reached and (results["reference_fid"] is not None or not reference_fid or stats is None)
    save()
    return results
