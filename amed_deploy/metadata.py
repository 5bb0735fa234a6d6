"""The record an exported graph carries (ONNX metadata_props, copied into engine manifests): what the
graph computes, for which batch range and precision, and the whole sampler configuration. Every
field is read strictly (`fields.py`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import EDM_SIGMA_RANGE, MAX_SIGMA, SamplerConfig
from .epd_table import check_values
from .errors import AmedError, short_repr
from .fields import (
    FieldError,
    check_nesting,
    loads_json,
    strict_float,
    strict_int,
    strict_list,
    strict_str,
)
from .records import check_stamp, stamp
from .solvers import get_solver

METADATA_KEY = "amed_deploy"
FORMAT = "amed-deploy/graph"
# 2: sigma_range recorded in every graph (version 1 records read as their readers did); 3: the sampler's
# solver name means the published formula of that name (#17): a version <= 2 record's name is read through
# RENAMED_FORMULAS ("amed_ipndm" then was today's "amed_ipndm_uneven")
# 4: kind "epd" (a denoiser graph whose EPD table is in `epd`)
FORMAT_VERSION = 4
KINDS = ("amed", "epd", "denoiser")
PRECISIONS = ("fp32", "fp16", "bf16")  # bf16: the PyTorch executor only (exporters refuse it)
# What a graph was exported for: standard ONNX that any runtime (TensorRT 10/11 too) parses, or a graph
# rewritten with ONNX Runtime's contrib ops, which only ONNX Runtime's CUDA provider runs.
TARGETS = ("portable", "ort-cuda")

# Bounds of a record's numbers: generous for real models, small enough that nothing overflows later.
MAX_CHANNELS = 64
MAX_RESOLUTION = 16384
MAX_LABEL_DIM = 100_000
MAX_BATCH = 2**31 - 1  # whether a batch fits in memory is checked separately (memory.py)
MAX_AFS_RCA = 1e6
MAX_ACTIVATION_BYTES = 2**40  # network["activation_bytes_per_sample"]: 1 TiB per sample


@dataclass(frozen=True)
class GraphSpec:
    """What a graph is. kind 'amed': outputs denoised + r, c, a; kinds 'epd' and 'denoiser': denoised only.

    afs_rca is the predictor's (r, c, a) on a zero feature for the first interval after an analytical
    first step: it depends only on the fixed times, so it is computed once at export time. `epd` is an
    EPD sampler's whole learned table ([interval][point] -> [r, weight, c, a], `epd_table.EPDParams`):
    input-independent constants, so the graph itself is the plain denoiser, called with batches B and
    K*B (its batch range covers both)."""

    kind: str
    precision: str
    image_shape: tuple[int, int, int]
    label_dim: int
    batch_min: int
    batch_opt: int
    batch_max: int
    sampler: SamplerConfig | None = None
    afs_rca: tuple[float, float, float] | None = None
    epd: list | None = None
    tap: str | None = None
    checkpoint_sha256: str | None = None
    predictor_sha256: str | None = None
    network: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)
    target: str = "portable"
    sigma_range: tuple[float, float] = EDM_SIGMA_RANGE  # the network's; a solver chosen at run time uses it

    def __post_init__(self) -> None:
        lo, hi = self.sigma_range
        if not 0 < lo < hi <= MAX_SIGMA:
            raise AmedError(f"graph sigma range must satisfy 0 < sigma_min < sigma_max, got {lo:g}..{hi:g}")
        if self.target not in TARGETS:
            raise AmedError(f"graph target must be one of {TARGETS}, got {self.target!r}")
        if self.kind not in KINDS:
            raise AmedError(f"graph kind must be one of {KINDS}, got {self.kind!r}")
        if self.precision not in PRECISIONS:
            raise AmedError(f"graph precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise AmedError(f"bad batch range {self.batch_min}/{self.batch_opt}/{self.batch_max}")
        if self.kind in ("amed", "epd") and self.sampler is None:
            raise AmedError(f"an {self.kind.upper()} graph must carry its sampler configuration")
        if (self.kind == "epd") != (self.epd is not None):
            raise AmedError("an EPD graph, and only one, carries an EPD table")
        if self.epd is not None:
            object.__setattr__(self, "epd", check_values(self.epd))
            solver = get_solver(self.sampler.solver)
            if solver.predictor != "epd":
                raise AmedError(f"an EPD graph's sampler must be an EPD solver, not {solver.name}")
            if len(self.epd) != self.sampler.num_points - 1 or len(self.epd[0]) != solver.parallel_points:
                raise AmedError(
                    f"the EPD table has {len(self.epd)} intervals of {len(self.epd[0])} points; {solver.name} with "
                    f"{self.sampler.num_points} time points needs {self.sampler.num_points - 1} of "
                    f"{solver.parallel_points}"
                )
        if self.afs_rca is not None and (
            len(self.afs_rca) != 3 or not all(math.isfinite(v) and abs(v) <= MAX_AFS_RCA for v in self.afs_rca)
        ):
            raise AmedError(f"AFS predictor constants must be three finite numbers within +-{MAX_AFS_RCA:g}")

    @property
    def conditional(self) -> bool:
        return self.label_dim > 0

    @property
    def parallel_points(self) -> int:
        """K: an EPD graph is also called with K times the sampling batch (1 for every other kind)."""
        return get_solver(self.sampler.solver).parallel_points if self.kind == "epd" else 1

    def call_batches(self, batch: int, parallel: bool = True) -> tuple[int, ...]:
        """The batch sizes a sampler of `batch` samples calls this graph with, (B,) or for EPD (B, K*B),
        after checking that both are in the graph's range. `parallel=False`: the sampler makes no
        parallel call (an EPD graph's denoiser under a training-free solver), so only (B,)."""
        k = self.parallel_points if parallel else 1
        if k > 1 and self.batch_min <= batch <= self.batch_max < k * batch:
            raise AmedError(
                f"batch {batch} is too large for this EPD graph: its parallel call evaluates {k} points per "
                f"sample ({k * batch}), and the graph takes at most {self.batch_max}; use batch <= "
                f"{self.batch_max // k} or re-export with a larger --batch"
            )
        self.check_batch(batch)
        return (batch,) if k == 1 else (batch, k * batch)

    def check_batch(self, batch: int) -> None:
        """Refuse a batch outside the exported range with the range in the message."""
        if not self.batch_min <= batch <= self.batch_max:
            fixed = self.batch_min == self.batch_max
            allowed = f"exactly {self.batch_min}" if fixed else f"{self.batch_min}..{self.batch_max}"
            raise AmedError(f"batch {batch} is outside this graph's range ({allowed}); re-export with --batch")

    def to_dict(self) -> dict:
        d = {**asdict(self), **stamp(FORMAT, FORMAT_VERSION)}
        d["sampler"] = None if self.sampler is None else self.sampler.to_dict()
        d["image_shape"] = list(self.image_shape)
        d["afs_rca"] = None if self.afs_rca is None else list(self.afs_rca)
        d["sigma_range"] = list(self.sigma_range)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: object) -> GraphSpec:
        """Parse and validate; every malformed record becomes one AmedError."""
        if not isinstance(d, dict):
            raise AmedError("amed-deploy metadata is not a JSON object")
        check_nesting(d, "amed-deploy metadata")
        version = check_stamp(
            d, FORMAT, FORMAT_VERSION, "amed-deploy metadata", "a graph record made by `amed-deploy export`"
        )
        try:
            raw_sampler = d.get("sampler")
            sampler = None if raw_sampler is None else SamplerConfig.from_dict(raw_sampler, renamed=version <= 2)
            if version >= 2:
                lo, hi = strict_list(d["sigma_range"], "sigma_range", 2)
                sigmas = (strict_float(lo, "sigma_min", 0.0, MAX_SIGMA), strict_float(hi, "sigma_max", 0.0, MAX_SIGMA))
            else:  # what version-1 readers used for a solver chosen at run time
                sigmas = (sampler.sigma_min, sampler.sigma_max) if sampler is not None else EDM_SIGMA_RANGE
            c, h, w = strict_list(d["image_shape"], "image_shape", 3)
            shape = (
                strict_int(c, "image channels", 1, MAX_CHANNELS),
                strict_int(h, "image height", 1, MAX_RESOLUTION),
                strict_int(w, "image width", 1, MAX_RESOLUTION),
            )
            rca = d.get("afs_rca")
            if rca is not None:
                rca = tuple(
                    strict_float(v, "afs_rca", -MAX_AFS_RCA, MAX_AFS_RCA) for v in strict_list(rca, "afs_rca", 3)
                )
            return cls(
                kind=strict_str(d["kind"], "kind"),
                precision=strict_str(d["precision"], "precision"),
                image_shape=shape,
                label_dim=strict_int(d["label_dim"], "label_dim", 0, MAX_LABEL_DIM),
                batch_min=strict_int(d["batch_min"], "batch_min", 1, MAX_BATCH),
                batch_opt=strict_int(d["batch_opt"], "batch_opt", 1, MAX_BATCH),
                batch_max=strict_int(d["batch_max"], "batch_max", 1, MAX_BATCH),
                sampler=sampler,
                afs_rca=rca,  # type: ignore[arg-type]
                epd=d.get("epd"),
                tap=_optional_str(d.get("tap"), "tap"),
                checkpoint_sha256=_optional_str(d.get("checkpoint_sha256"), "checkpoint_sha256"),
                predictor_sha256=_optional_str(d.get("predictor_sha256"), "predictor_sha256"),
                network=_network(d.get("network")),
                producer=_object(d.get("producer"), "producer"),
                target=strict_str(d.get("target", "portable"), "target"),
                sigma_range=sigmas,
            )
        except FieldError as e:
            raise AmedError(f"amed-deploy metadata is malformed: {e}") from None
        except AmedError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise AmedError(f"amed-deploy metadata is malformed: {type(e).__name__}: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> GraphSpec:
        return cls.from_dict(loads_json(text, "amed-deploy metadata"))


def _optional_str(value: object, name: str) -> str | None:
    return None if value is None else strict_str(value, name)


def _object(value: object, name: str) -> dict:
    """A JSON object or null/absent (an empty one); dict() of a list of pairs is not accepted."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(f"{name} must be a JSON object, got {short_repr(value)}")
    return dict(value)


def _network(value: object) -> dict:
    """The network description; its activation estimate feeds the memory check, so it is read strictly."""
    network = _object(value, "network")
    key = "activation_bytes_per_sample"
    if key in network:
        network[key] = strict_int(network[key], f"network.{key}", 0, MAX_ACTIVATION_BYTES)
    return network


def spec_from_metadata_props(props: dict[str, str], source: str = "graph") -> GraphSpec:
    """Read the spec from an ONNX model's metadata_props (as a name -> value dict)."""
    if METADATA_KEY not in props:
        raise AmedError(
            f"{source} has no amed-deploy metadata: it was not made by `amed-deploy export` "
            "(export your checkpoint with `amed-deploy export --ckpt edm.pt ...`)"
        )
    return GraphSpec.from_json(props[METADATA_KEY])


def onnx_graph_spec(onnx_path: str | os.PathLike) -> GraphSpec:
    """The GraphSpec an exported ONNX carries in metadata_props, read without a runtime session (so it is
    known before choosing a provider, and by `build`, `info` and the demo cache)."""
    import onnx

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise AmedError(f"ONNX file {path} does not exist") from None
    except Exception as e:  # protobuf raises its own DecodeError types
        raise AmedError(f"{path} is not a readable ONNX model: {type(e).__name__}: {e}") from None
    return spec_from_metadata_props({p.key: p.value for p in model.metadata_props}, source=str(path))
