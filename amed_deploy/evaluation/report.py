"""The results of a table run as markdown: one row per solver, one column per NFE."""

from __future__ import annotations

from ..solvers import display_name, find_solver


def format_value(x: float | None, spec: str) -> str:
    """A measured value, or 'n/a' where none was measured."""
    return "n/a" if x is None else format(x, spec)


def _baseline(solver: str) -> bool:
    """A training-free solver (its AFS cells get the footnote); unknown names count as one."""
    spec = find_solver(solver)
    return spec is None or not spec.uses_predictor


def render_results_markdown(results: dict) -> str:
    """The results as a markdown table: one row per solver, one column per NFE, cells 'FID / RMSE'
    (just the one measured when a run measured only FID or only RMSE), and a last column of the network
    evaluations per image at each NFE (more than the NFE where a solver evaluates points in parallel)."""
    cells = results.get("cells", [])
    has_fid = any(c.get("fid") is not None for c in cells)
    has_rmse = any(c.get("rmse") is not None for c in cells)

    def text(c: dict) -> str:
        fid = [format_value(c.get("fid"), ".2f")] if has_fid else []
        return " / ".join(fid + ([format_value(c.get("rmse"), ".4f")] if has_rmse else []))

    solvers = list(dict.fromkeys(c["solver"] for c in cells))
    nfes = sorted({c["nfe"] for c in cells})
    by_key = {(c["solver"], c["nfe"]): c for c in cells}
    lines = [
        "| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " | network evaluations |",
        "|---|" + "---|" * (len(nfes) + 1),
    ]
    notes = []
    for s in solvers:
        row, evaluations = [], []
        for n in nfes:
            c = by_key.get((s, n))
            evaluations.append(str(c["evaluations"]) if c and c.get("evaluations") is not None else "–")
        for n in nfes:
            c = by_key.get((s, n))
            if c is None or (c.get("fid") is None and c.get("rmse") is None):
                row.append("–")
                if c is not None and c.get("note"):
                    notes.append(f"{display_name(s)} NFE {n}: {c['note']}")
                continue
            mark = " ᵃ" if c.get("afs") and _baseline(s) else ""
            row.append(f"{text(c)}{mark}")
        lines.append(f"| {display_name(s)} | " + " | ".join(row) + f" | {' / '.join(evaluations)} |")
    out = ["\n".join(lines), ""]
    ref = results.get("reference")
    if ref and ref.get("fid") is not None:
        out.append(
            f"Reference sampler: {display_name(ref['solver'])}, NFE {ref['nfe']} "
            f"({ref.get('num_points', '?')} polynomial time points, then one Euler step to 0): FID {ref['fid']:.2f}."
        )
    num = results.get("settings", {}).get("num")
    rmse = results.get("rmse_reference") or {}
    desc = []
    if has_fid:
        desc.append("FID against the training set" + (f", {num} samples per cell" if num else ""))
    if has_rmse and rmse:
        what = (
            f"Heun with {rmse.get('points')} polynomial time points"
            if rmse.get("method") == "heun"
            else "an adaptive DOP853 solve"
        )
        desc.append(
            f"RMSE (model space [-1, 1]) of the final x against {what} from the same noise, {rmse.get('num')} samples"
        )
    if desc:
        out.append("Cells: " + " / ".join(["FID"] * has_fid + ["RMSE"] * has_rmse) + ". " + "; ".join(desc) + ".")
    if any(c.get("afs") for c in cells if _baseline(c["solver"])):
        out.append("ᵃ odd NFE of a 2-evaluation solver: analytical first step (AFS), NFE = 2(N-1)-1.")
    if results.get("device_name"):
        out.append(f"Measured on {results['device_name']}.")
    if notes:
        out += ["", "Not measured:", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"
