"""`amed-deploy bench`: how fast the deployed sampler is, against the eager PyTorch loop a researcher
would write and against the GPU's own dense fp16 matrix rate, all measured in the same run.

For every (network, NFE, batch, path): the network alone (one executor run), the whole sampling
call end to end, images/s, speedup over the eager fp32 baseline, loop overhead = end-to-end /
(NFE x network alone), achieved FLOP/s as a fraction of the measured fp16 matmul rate, and peak GPU
memory. A path that cannot run here (no CUDA provider, no TensorRT) is reported with its reason.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .amed_network import AMEDNetwork, TorchModel
from .checkpoint.format import Checkpoint, model_sha256, save_checkpoint
from .config import EDM_SIGMA_RANGE, SamplerConfig
from .epd_table import EPDTable
from .errors import AmedError, first_line
from .files import file_sha256
from .networks import CIFAR10_KWARGS, build_network, image_shape, randomize_
from .noise import make_inputs, seed_range, start_state
from .predictor import AMEDPredictor
from .predictor_file import PredictorBundle, save_predictor
from .solvers import sample

if TYPE_CHECKING:
    from .assets import DemoModel
    from .runtime import Sampler

PATHS = (
    "eager-fp32",  # (a) the baseline: the AMED loop in plain eager fp32 PyTorch, default TF32 settings
    "torch-fp16",
    "torch-fp16-graph",  # (b) fp16, channels-last, the whole NFE loop as one CUDA graph
    "torch-fp16-compile-graph",  # (b) the same with the network through torch.compile
    "torch-bf16-compile-graph",  # (b) the same in bf16
    "ort-fp32",
    "ort-fp16",
    "ort-fp16-graph",  # (c) ONNX Runtime CUDA provider with I/O binding (and its CUDA graph)
    "ort-cuda-fp16",  # (c) the graph exported with --target ort-cuda (ORT's UNet fusions)
    "ort-cuda-fp16-graph",  # (c) the same with ORT's CUDA graph
    "user-compile",  # what a user gets without this project: reference network, autocast, torch.compile
    "trt-fp16",  # (d) TensorRT, where it can be imported
)


@dataclass
class Row:
    network: str
    nfe: int
    batch: int
    path: str
    net_ms: float | None = None
    e2e_ms: float | None = None
    images_per_s: float | None = None
    speedup: float | None = None
    loop_overhead: float | None = None
    fp16_rate_fraction: float | None = None
    peak_mib: float | None = None
    inputs_ms: float | None = None  # host time of the seeded CPU noise inside end-to-end (part of the overhead)
    note: str = ""
    speedup_user: float | None = None  # over the user-compile baseline of the same cell


@dataclass
class BenchModel:
    """A checkpoint + predictor on disk (what every path loads) and its FLOPs per forward per image."""

    name: str
    ckpt: Path
    predictor: Path
    network: AMEDNetwork
    flops_per_image: float = 0.0
    graphs: dict = field(default_factory=dict)


def cuda_time_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median of CUDA-event-timed calls after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def paired_times_ms(
    net_call: Callable[[], object], e2e: Callable[[], object], nfe: int, repeats: int
) -> tuple[float, float]:
    """(network alone, end to end), measured alternately so both see the same GPU clock state.

    The network is timed as `nfe` back-to-back calls (the loop's duty cycle) divided by `nfe`: a
    forward timed alone and idle runs faster than inside sustained work, which would make a loop
    that adds nothing look like overhead (docs/BENCHMARKS.md)."""
    for _ in range(3):
        net_call()
        e2e()
    net, whole = [], []
    for _ in range(repeats):
        net.append(cuda_time_ms(lambda: [net_call() for _ in range(nfe)], 1, warmup=0) / nfe)
        whole.append(cuda_time_ms(e2e, 1, warmup=0))
    return statistics.median(net), statistics.median(whole)


def wall_time_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of fn() with the GPU synchronised around each call (host work included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def host_time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of a host-only call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """fn recorded once as a CUDA graph, the way the Sampler records its loop; returns its replay."""
    from .runtime.sampler import capture_graph

    graph, _ = capture_graph(fn, torch.device("cuda", torch.cuda.current_device()))
    return graph.replay


def fp16_matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """The GPU's measured dense fp16 matrix rate (random data), the roofline for the fractions."""
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    ms = cuda_time_ms(lambda: a @ b, repeats)
    return 2 * n**3 / (ms / 1000) / 1e12


def flops_per_image(network: AMEDNetwork) -> float:
    """FLOPs of one network forward for one image (torch's FLOP counter; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = network.net
    device = next(net.parameters()).device
    x = torch.zeros(1, *image_shape(net), device=device)
    sigma = torch.ones(1, device=device)
    labels = torch.zeros(1, network.label_dim, device=device) if network.label_dim else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(x, sigma, sigma, labels)
    return float(counter.get_total_flops())


def random_cifar10() -> tuple[torch.nn.Module, dict]:
    """The released CIFAR-10 DDPM++ configuration with random weights: speed does not depend on training."""
    return randomize_(build_network("EDMPrecond", dict(CIFAR10_KWARGS)), 0, 0.5).eval(), dict(CIFAR10_KWARGS)


def bench_network_names(names: str) -> list[tuple[str, DemoModel | None]]:
    """`bench --networks`, checked before anything is built: (row name, bundled model, or None for
    random_cifar10) for `bundled` (the default bundled model), `bundled:NAME` (the bundled model NAME, rows
    `bundled-NAME`) and `cifar10`."""
    from . import assets

    parsed = []
    for name in names.split(","):
        if name == "cifar10":
            parsed.append((name, None))
            continue
        model = assets.DEFAULT_MODEL if name == "bundled" else None
        if name.startswith("bundled:"):
            model = assets.DEMO_MODELS.get(name.removeprefix("bundled:"))
        if model is None:
            choices = ", ".join(["bundled", *(f"bundled:{m}" for m in assets.DEMO_MODELS), "cifar10"])
            raise AmedError(f"unknown bench network {name!r}: {choices}")
        parsed.append((name.replace(":", "-"), model))
    return parsed


def bench_networks(parsed: list[tuple[str, DemoModel | None]]) -> list[tuple[str, torch.nn.Module, dict]]:
    """(row name, network, network kwargs) for the networks bench_network_names checked."""
    from .checkpoint.build import build_model
    from .checkpoint.load import load_checkpoint

    networks = []
    for row, model in parsed:
        if model is None:
            networks.append((row, *random_cifar10()))
        else:
            ckpt = load_checkpoint(model.file)
            networks.append((row, build_model(ckpt), ckpt.network_kwargs))
    return networks


BENCH_SOLVERS = ("amed", "epd", "epd_ipndm")  # the learned solvers `bench` can sample


def bench_sampler(nfe: int, solver: str = "amed") -> SamplerConfig:
    """A learned solver (AMED-Solver, or EPD at the same parallel NFE) on the EDM time grid, with AFS at
    odd NFE (as the papers' NFE 5 rows)."""
    return SamplerConfig.create(solver, nfe, "time_uniform", EDM_SIGMA_RANGE, afs=nfe % 2 == 1)


def prepare_model(name: str, net: torch.nn.Module, kwargs: dict, sampler: SamplerConfig, folder: Path) -> BenchModel:
    """Write the network and an (untrained: speed does not depend on it) predictor to disk."""
    ckpt = folder / f"{name}.pt"
    checkpoint = Checkpoint("EDMPrecond", kwargs, net.state_dict(), {})
    save_checkpoint(checkpoint, ckpt)
    torch.manual_seed(0)
    epd = sampler.solver_config.spec.predictor == "epd"
    predictor = EPDTable(sampler.num_points - 1) if epd else AMEDPredictor()
    network = AMEDNetwork(net, predictor).eval()
    pred = folder / f"{name}-{sampler.solver}{sampler.nfe}.pt"
    save_predictor(
        pred,
        PredictorBundle(
            network.predictor, sampler, network.tap, file_sha256(ckpt), model_sha256=model_sha256(checkpoint)
        ),
    )
    model = BenchModel(name, ckpt, pred, network.cuda())
    model.flops_per_image = flops_per_image(model.network)
    return model


def network_args(network: AMEDNetwork, batch: int) -> tuple:
    """Inputs of one network call of `batch` samples on the GPU (its time does not depend on the values)."""
    noise, labels = make_inputs(seed_range(0, batch), image_shape(network.net), network.label_dim)
    sigma, sigma_next = torch.full((batch,), 80.0, device="cuda"), torch.full((batch,), 6.0, device="cuda")
    return noise.cuda() * 80, sigma, sigma_next, None if labels is None else labels.cuda()


def loop_calls(network: AMEDNetwork, sampler: SamplerConfig) -> list[int]:
    """Points per sample of each network call of one sampling loop, in order (1, or K for an EPD parallel
    call), as the shared solver loop makes them (run once, eagerly, for one sample)."""
    noise, labels = make_inputs([0], image_shape(network.net), network.label_dim)
    x0, labels = start_state(noise, labels, sampler.t_steps[0], next(network.parameters()).device)
    with torch.no_grad():
        _, state = sample(TorchModel(network, labels), x0, sampler.t_steps, sampler.solver_config)
    return state.calls


def cycling_network(call_at: Callable[[int], Callable[[], object]], calls: list[int], batch: int) -> Callable:
    """One network call per invocation, cycling through the loop's calls at their batch sizes, so that NFE
    invocations time one loop's worth of network work (`call_at(n)`: a call of n samples)."""
    by_points = {k: call_at(k * batch) for k in sorted(set(calls))}
    order = itertools.cycle([by_points[k] for k in calls])
    return lambda: next(order)()


def eager_baseline(
    model: BenchModel, sampler: SamplerConfig, batch: int
) -> tuple[Callable[[], object], Callable[[int], Callable[[], object]]]:
    """(a): noise and labels to the GPU, then the shared solver loop over the fp32 module, no buffers;
    and a network call of n samples."""
    shape = image_shape(model.network.net)

    def run() -> torch.Tensor:
        noise, labels = make_inputs(seed_range(0, batch), shape, model.network.label_dim)
        x0, labels = start_state(noise, labels, sampler.t_steps[0], "cuda")
        with torch.no_grad():
            x, _ = sample(TorchModel(model.network, labels), x0, sampler.t_steps, sampler.solver_config)
        return x

    def call_at(n: int) -> Callable[[], object]:
        args = network_args(model.network, n)
        return torch.no_grad()(lambda: model.network(*args))

    return run, call_at


def user_compile_baseline(
    model: BenchModel, sampler: SamplerConfig, batch: int
) -> tuple[Callable[[], object], Callable[[int], Callable[[], object]]]:
    """The recipe a user would write: the reference-formulation network with fp32 weights under
    torch.autocast(fp16) and torch.compile(mode="reduce-overhead") (Inductor's CUDA graphs), none of
    this project's half-precision kernels, noise and labels drawn on the GPU, the plain solver loop."""
    from .networks.layers import reference_kernels

    network = copy.deepcopy(model.network).eval()
    compiled = torch.compile(network, mode="reduce-overhead")
    net = network.net
    shape = (batch, *image_shape(net))
    gen = torch.Generator(device="cuda").manual_seed(0)

    def run() -> torch.Tensor:
        with reference_kernels(), torch.no_grad(), torch.autocast("cuda", torch.float16):
            noise = torch.randn(shape, device="cuda", generator=gen)
            labels = None
            if network.label_dim:
                idx = torch.randint(network.label_dim, (batch,), device="cuda", generator=gen)
                labels = torch.nn.functional.one_hot(idx, network.label_dim).float()
            solver_model = TorchModel(network, labels)
            solver_model.network = compiled  # calls go through the compiled module; its predictor is the same
            x, _ = sample(solver_model, noise * sampler.t_steps[0], sampler.t_steps, sampler.solver_config)
            return x.clone()

    def call_at(n: int) -> Callable[[], object]:
        args = network_args(network, n)

        def forward() -> object:
            with reference_kernels(), torch.no_grad(), torch.autocast("cuda", torch.float16):
                return compiled(*args)

        return forward

    return run, call_at


def executor_call(smp: Sampler, n: int) -> Callable[[], object]:
    """A call of a Sampler's network executor on its buffers of n samples; replayed from a CUDA graph
    where the Sampler's loop is one graph, so the network is timed the way the loop runs it."""
    run = partial(smp.executor.run, n)
    return graphed(run) if smp.graphed else run


def open_path(model: BenchModel, path: str, batch: int, folder: Path):
    """A Sampler for a deployed path (exports the graphs it needs once per model and precision)."""
    from exporters.onnx_export import export_onnx

    from .runtime import Sampler
    from .sampling import load_model

    if path.startswith("torch"):
        return Sampler.load(
            model.ckpt,
            predictor=model.predictor,
            batch=batch,
            device="cuda",
            precision="bf16" if "bf16" in path else "fp16",
            cuda_graph=path.endswith("graph"),
            compile="compile" in path,
        )
    precision = "fp32" if path == "ort-fp32" else "fp16"
    target = "ort-cuda" if path.startswith("ort-cuda") else "portable"
    # ORT records a CUDA graph only where no node runs on the host: a fixed-batch graph (no shape logic)
    fixed = path.startswith("ort") and path.endswith("graph")
    key = (precision, target, batch if fixed else None)
    if key not in model.graphs:
        loaded = load_model(model.ckpt, model.predictor)
        out = folder / f"{model.name}-{precision}-{target}{f'-b{batch}' if fixed else ''}.onnx"
        export_onnx(
            loaded.network,
            out,
            sampler=loaded.bundle.sampler,
            precision=precision,
            batch=batch if fixed else 16,
            batch_range=None if fixed else (1, 256),
            check=False,
            target=target,
        )
        model.graphs[key] = out
    graph = model.graphs[key]
    if path.startswith("trt"):
        from exporters.trt_build import build_engine

        plan = folder / f"{model.name}-{precision}.plan"
        if not plan.exists():
            build_engine(graph, plan)
        return Sampler.load(plan, batch=batch, device="cuda", cuda_graph=True)
    return Sampler.load(graph, batch=batch, device="cuda", cuda_graph=path.endswith("graph"))


def run_bench(
    models: list[tuple[str, torch.nn.Module, dict]],
    nfes: list[int],
    batches: list[int],
    paths: list[str],
    repeats: int = 20,
    progress: Callable[[Row], None] | None = None,
    previous: dict | None = None,
    deadline: float | None = None,
    save: Callable[[list[Row], dict], None] | None = None,
    solvers: Sequence[str] = ("amed",),
) -> tuple[list[Row], dict]:
    """Every (solver, model, NFE, batch, path) cell, measured in one process; returns rows and facts.
    `solvers` are the learned solvers sampled, one after the other (amed, or epd: its rows' network is
    named `<network>-epd`, and its network time is the mean over the loop's calls, of batch B and K*B).

    `previous` (an earlier call's rows_to_json, same GPU) resumes: its cells are kept, not measured
    again, and its eager rows stay the speedup baseline. No new cell starts after `deadline`
    (time.monotonic()); facts["complete"] says whether every cell is in. `save(rows, facts)` is
    called after every cell, so nothing measured is lost to a time limit."""
    folder = Path(tempfile.mkdtemp(prefix="amed-bench-"))
    rows, facts = rows_from_json(previous) if previous else ([], {})
    gpu = torch.cuda.get_device_name()
    if facts and facts.get("gpu") != gpu:
        raise AmedError(f"the results to resume were measured on {facts.get('gpu')}, this is {gpu}: start afresh")
    if not facts:
        facts = {"gpu": gpu, "torch": torch.__version__, "fp16_matmul_tflops": fp16_matmul_tflops()}
    facts["complete"] = True
    done = done_cells(rows)  # the resumed cells; each new cell is measured once
    for solver, (base, net, kwargs) in itertools.product(solvers, models):
        name = base if solver == "amed" else f"{base}-{solver}"
        for nfe in nfes:
            if all(cell_key(name, nfe, b, p) in done for b in batches for p in paths):
                continue
            if deadline is not None and time.monotonic() > deadline:
                facts["complete"] = False
                continue
            sampler = bench_sampler(nfe, solver)
            model = prepare_model(f"{name}-nfe{nfe}", net, kwargs, sampler, folder)
            calls = loop_calls(model.network, sampler)
            facts.setdefault("gflops_per_image", {})[name] = model.flops_per_image / 1e9
            shape, label_dim = image_shape(model.network.net), model.network.label_dim
            for batch in batches:
                base_e2e = baseline_e2e(rows, name, nfe, batch)
                for path in paths:
                    if cell_key(name, nfe, batch, path) in done:
                        continue
                    if deadline is not None and time.monotonic() > deadline:
                        facts["complete"] = False
                        break
                    row = Row(name, nfe, batch, path)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    free_before = torch.cuda.mem_get_info()[0]
                    if "compile" in path:
                        # dynamo keeps at most 8 compilations per code object (every cell's forward is the
                        # same one) and runs the rest eagerly: each compiled cell starts as a fresh process
                        torch._dynamo.reset()
                    try:
                        if path == "eager-fp32":
                            e2e, call_at = eager_baseline(model, sampler, batch)
                        elif path == "user-compile":
                            e2e, call_at = user_compile_baseline(model, sampler, batch)
                        else:
                            smp = open_path(model, path, batch, folder)
                            e2e, call_at = partial(smp.sample, seed=0), partial(executor_call, smp)
                        net_call = cycling_network(call_at, calls, batch)
                        row.net_ms, row.e2e_ms = paired_times_ms(net_call, e2e, nfe, repeats)
                        row.inputs_ms = host_time_ms(
                            partial(make_inputs, seed_range(0, batch), shape, label_dim), repeats
                        )
                    except Exception as e:  # a path that cannot run here is a finding, not a crash
                        row.note = f"{type(e).__name__}: {first_line(e, 160)}"
                        _record(row, rows, facts, progress, save)
                        continue
                    used = max(torch.cuda.max_memory_allocated(), free_before - torch.cuda.mem_get_info()[0])
                    row.peak_mib = used / 2**20
                    row.images_per_s = batch / (row.e2e_ms / 1000)
                    row.loop_overhead = row.e2e_ms / (nfe * row.net_ms)
                    achieved = sum(calls) * batch * model.flops_per_image / (row.e2e_ms / 1000) / 1e12
                    row.fp16_rate_fraction = achieved / facts["fp16_matmul_tflops"]
                    if path == "eager-fp32":
                        base_e2e = row.e2e_ms
                    row.speedup = base_e2e / row.e2e_ms if base_e2e else None
                    _record(row, rows, facts, progress, save)
    return rows, facts


def _record(row: Row, rows: list[Row], facts: dict, progress, save) -> None:
    rows.append(row)
    with_user_speedups(rows)
    if progress:
        progress(row)
    if save:
        save(rows, facts)


def cell_key(network: str, nfe: int, batch: int, path: str) -> tuple[str, int, int, str]:
    return (network, nfe, batch, path)


def done_cells(rows: list[Row]) -> set[tuple[str, int, int, str]]:
    """Cells already measured (or found impossible here: a note is a result too)."""
    return {cell_key(r.network, r.nfe, r.batch, r.path) for r in rows}


def baseline_e2e(rows: list[Row], network: str, nfe: int, batch: int, path: str = "eager-fp32") -> float | None:
    """End-to-end time of a baseline path (eager fp32, or user-compile) for this cell, if measured."""
    for r in rows:
        if (r.network, r.nfe, r.batch, r.path) == (network, nfe, batch, path) and r.e2e_ms:
            return r.e2e_ms
    return None


def with_user_speedups(rows: list[Row]) -> list[Row]:
    """Fill speedup_user from the user-compile row of each cell (measured before or after the row)."""
    for r in rows:
        user = baseline_e2e(rows, r.network, r.nfe, r.batch, "user-compile")
        r.speedup_user = user / r.e2e_ms if user and r.e2e_ms else None
    return rows


def rows_from_json(data: dict) -> tuple[list[Row], dict]:
    """Inverse of rows_to_json (for resuming); refuses a file that is not one."""
    try:
        return [Row(**r) for r in data["rows"]], dict(data["facts"])
    except (KeyError, TypeError) as e:
        raise AmedError(f"not a bench results file ({type(e).__name__}: {e})") from None


def render_markdown(rows: list[Row], facts: dict) -> str:
    gflops = ", ".join(f"{k} {v:.2f}" for k, v in facts.get("gflops_per_image", {}).items())
    lines = [
        f"GPU: **{facts['gpu']}**, torch {facts['torch']}; measured dense fp16 matmul rate "
        f"{facts['fp16_matmul_tflops']:.0f} TFLOP/s; GFLOP per image per forward: {gflops}.",
        "",
        "| network | NFE | batch | path | net alone ms | end-to-end ms | img/s | speedup vs eager | vs user-compile "
        "| loop overhead | fp16-rate fraction | peak MiB | host noise ms | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    order = {p: i for i, p in enumerate(PATHS)}
    for r in sorted(rows, key=lambda r: (r.network, r.nfe, r.batch, order.get(r.path, len(order)))):
        lines.append(
            f"| {r.network} | {r.nfe} | {r.batch} | {r.path} | {f(r.net_ms, '.2f')} | {f(r.e2e_ms, '.2f')} | "
            f"{f(r.images_per_s, '.0f')} | {f(r.speedup, '.2f')} | {f(r.speedup_user, '.2f')} | "
            f"{f(r.loop_overhead, '.2f')} | "
            f"{f(r.fp16_rate_fraction, '.1%')} | {f(r.peak_mib, '.0f')} | {f(r.inputs_ms, '.2f')} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def rows_to_json(rows: list[Row], facts: dict) -> dict:
    return {"facts": facts, "rows": [asdict(r) for r in rows]}
