"""Sample quality on a CUDA GPU: FID and RMSE for every solver x NFE cell (as `amed-deploy eval`),
the reference sampler's FID, PCA of accurate trajectories, and sample grids at NFE 5.

    python benchmarks/quality_table.py --ckpt runs/edm.pt --predictor-dir runs/predictors \\
        --data fashion-mnist/ --inception inception-2015-12-05.pt \\
        --num 10000 --device cuda --work work/quality --out results/quality --minutes 9

Writes 5 files into --out: results.json, RESULTS_table.md,
fid_vs_nfe.png, pca.png and samples_nfe5.png (one row per solver at NFE 5 plus EDM's Heun NFE 35,
one column per class, the same noise in every column). Progress (results JSON after every cell, the
training-set statistics) lives in --work: a call cut short by --minutes, or a later call on the same
warm machine, resumes there; run it again with the same arguments until it reports complete.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from amed_deploy.datasets import DATASETS
from amed_deploy.evaluation.pca import trajectory_pca
from amed_deploy.evaluation.plots import plot_fid_vs_nfe, plot_pca, require_matplotlib
from amed_deploy.evaluation.quality import ReferenceCache, prepare_fid
from amed_deploy.evaluation.report import render_results_markdown
from amed_deploy.evaluation.table import (
    default_solvers,
    edm_reference_sampler,
    evaluate_cells,
    find_predictors,
    plan_cells,
    predictor_templates,
    write_json,
)
from amed_deploy.files import atomic_write_bytes
from amed_deploy.images import grid, save_image
from amed_deploy.sampling import load_model, reference_sample
from amed_deploy.solvers import display_name


def sample_grid(network, cells, nfe: int, seed: int, device: str, path: Path) -> None:
    """One row per solver at this NFE (plus EDM's sampler), one column per class, shared noise."""
    rows, names = [], []
    classes = list(range(network.label_dim)) if network.label_dim else None
    n = len(classes) if classes else 10
    for cell in cells:
        if cell.nfe == nfe and cell.cfg is not None:
            x, _ = reference_sample(cell.network, cell.cfg, seed, n, classes, device)
            rows.append(x.cpu())
            names.append(f"{display_name(cell.solver)} ({nfe})")
    ref = edm_reference_sampler(network.net)
    x, _ = reference_sample(network, ref, seed, n, classes, device)
    rows.append(x.cpu())
    names.append(f"EDM Heun ({ref.nfe})")
    save_image(grid(torch.cat(rows), ncol=n, row_labels=names, scale=2), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--predictor-dir", default=".")
    ap.add_argument("--predictors", default=",".join(predictor_templates()), help="as `amed-deploy eval`")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="as `amed-deploy eval`")
    ap.add_argument("--dataset", default="auto", choices=["auto", *DATASETS], help="as `amed-deploy eval`")
    ap.add_argument("--inception", required=True)
    ap.add_argument(
        "--solvers",
        default=None,
        help="as `amed-deploy eval` [default: every training-free solver, then those of the predictors found]",
    )
    ap.add_argument("--nfe", default="3,5,7,9")
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rmse-num", type=int, default=256)
    ap.add_argument("--reference-points", type=int, default=256)
    ap.add_argument("--resize", default="tf", choices=["tf", "bilinear"])
    ap.add_argument("--fd-method", default="sqrtm", choices=["sqrtm", "eigh"], help="eigh: same FID, ~5x faster.")
    ap.add_argument("--pca-traj", type=int, default=64)
    ap.add_argument("--pca-points", type=int, default=256)
    ap.add_argument("--grid-nfe", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="/tmp/amed-quality", help="Progress folder (results JSON, stats cache).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=None, help="Start no new cell after this many minutes.")
    args = ap.parse_args()
    require_matplotlib()  # the plots come last: refuse now rather than after the measurements
    start = time.perf_counter()
    deadline = None if args.minutes is None else start + 60 * args.minutes
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    state = work / "results.json"

    nfes = [int(v) for v in args.nfe.split(",")]
    loaded = load_model(args.ckpt)
    network = loaded.network.to(device).eval()
    found = find_predictors(args.predictors.split(","), nfes, args.predictor_dir)
    solvers = default_solvers(found) if args.solvers is None else args.solvers.split(",")
    cells = plan_cells(network, loaded.checkpoint_sha256, solvers, nfes, found, device)
    inception, stats, fid_info = prepare_fid(
        args.data,
        args.inception,
        loaded.image_shape,
        device,
        work / "train-stats.npz",
        args.batch,
        args.resize,
        dataset=args.dataset,
    )
    header = {"checkpoint": args.ckpt, "checkpoint_sha256": loaded.checkpoint_sha256, "fid": fid_info}
    results = evaluate_cells(
        network,
        cells,
        args.num,
        args.batch,
        args.seed,
        device,
        stats,
        inception,
        args.resize,
        args.rmse_num,
        ReferenceCache("heun", args.reference_points),
        out=state,
        header=header,
        resume=True,
        deadline=deadline,
        fd_method=args.fd_method,
    )
    pcas = {}
    for key, scaled in (("pca", False), ("pca_scaled", True)):
        pca = results.get(key)
        if pca is None or pca.get("n_traj") != args.pca_traj or pca.get("n_points") != args.pca_points:
            pca = trajectory_pca(
                network, args.pca_traj, args.pca_points, args.seed, device, progress=True, scaled=scaled
            )
            results[key] = pca.to_dict()
            write_json(state, results)
        pcas[key] = results[key]

    table = render_results_markdown(results)
    for key, what in (("pca", "every state x_n kept"), ("pca_scaled", "states scaled by 1/sqrt(1 + t_n^2)")):
        pca = pcas[key]
        top, low = pca["mean_top"], pca["min_top"]
        table += (
            f"\nPCA of {pca['n_traj']} Heun trajectories with {pca['n_points']} polynomial time points ({what}, "
            f"centred per trajectory): the top 1 / 2 / 3 principal components explain "
            f"{top['1']:.4%} / {top['2']:.4%} / {top['3']:.4%} of the variance on average "
            f"(worst trajectory: {low['1']:.4%} / {low['2']:.4%} / {low['3']:.4%}).\n"
        )
    if not results.get("complete"):
        table += "\n**Incomplete run**: some cells were not reached; run again to resume.\n"
    atomic_write_bytes(out / "RESULTS_table.md", table.encode())
    plot_fid_vs_nfe(results, out / "fid_vs_nfe.png")
    plot_pca({"raw states": pcas["pca"], "scaled by 1/sqrt(1+t^2)": pcas["pca_scaled"]}, out / "pca.png")
    sample_grid(network, cells, args.grid_nfe, args.seed, device, out / f"samples_nfe{args.grid_nfe}.png")
    if state.resolve() != (out / "results.json").resolve():
        atomic_write_bytes(out / "results.json", state.read_bytes())
    print(table)
    print(f"complete: {results.get('complete')}; {time.perf_counter() - start:.0f} s this call")
    print(json.dumps({"files": sorted(p.name for p in out.iterdir())}))


if __name__ == "__main__":
    main()
