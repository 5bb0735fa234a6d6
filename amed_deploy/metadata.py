"""The record an exported graph carries (ONNX metadata_props, copied into engine manifests): what the
graph computes, for which batch range and precision, and the whole sampler configuration."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .config import SamplerConfig
from .errors import AmedError

METADATA_KEY = "amed_deploy"
SCHEMA = "amed-deploy/graph"
SCHEMA_VERSION = 1
KINDS = ("amed", "denoiser")
PRECISIONS = ("fp32", "fp16", "bf16")  # bf16: the PyTorch executor only (exporters refuse it)


@dataclass(frozen=True)
class GraphSpec:
    """What a graph is. kind 'amed': outputs denoised + r, c, a; kind 'denoiser': denoised only.

    afs_rca is the predictor's (r, c, a) on a zero feature for the first interval after an analytical
    first step: it depends only on the fixed times, so it is computed once at export time."""

    kind: str
    precision: str
    image_shape: tuple[int, int, int]
    label_dim: int
    batch_min: int
    batch_opt: int
    batch_max: int
    sampler: SamplerConfig | None = None
    afs_rca: tuple[float, float, float] | None = None
    tap: str | None = None
    checkpoint_sha256: str | None = None
    predictor_sha256: str | None = None
    network: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AmedError(f"graph kind must be one of {KINDS}, got {self.kind!r}")
        if self.precision not in PRECISIONS:
            raise AmedError(f"graph precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise AmedError(f"bad batch range {self.batch_min}/{self.batch_opt}/{self.batch_max}")
        if self.kind == "amed" and self.sampler is None:
            raise AmedError("an AMED graph must carry its sampler configuration")
        if self.afs_rca is not None and not all(math.isfinite(v) for v in self.afs_rca):
            raise AmedError("AFS predictor constants are not finite")

    @property
    def conditional(self) -> bool:
        return self.label_dim > 0

    def check_batch(self, batch: int) -> None:
        """Refuse a batch outside the exported range with the range in the message."""
        if not self.batch_min <= batch <= self.batch_max:
            fixed = self.batch_min == self.batch_max
            allowed = f"exactly {self.batch_min}" if fixed else f"{self.batch_min}..{self.batch_max}"
            raise AmedError(f"batch {batch} is outside this graph's range ({allowed}); re-export with --batch")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema"], d["schema_version"] = SCHEMA, SCHEMA_VERSION
        d["sampler"] = None if self.sampler is None else self.sampler.to_dict()
        d["image_shape"] = list(self.image_shape)
        d["afs_rca"] = None if self.afs_rca is None else list(self.afs_rca)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: object) -> GraphSpec:
        """Parse and validate; every malformed record becomes one AmedError."""
        if not isinstance(d, dict):
            raise AmedError("amed-deploy metadata is not a JSON object")
        if d.get("schema") != SCHEMA:
            raise AmedError(f"amed-deploy metadata has schema {d.get('schema')!r}, expected {SCHEMA!r}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise AmedError(
                f"graph metadata schema version {version!r} is not supported by this amed-deploy "
                f"(supports {SCHEMA_VERSION}); re-export the graph with this version"
            )
        try:
            sampler = None if d.get("sampler") is None else SamplerConfig.from_dict(d["sampler"])
            shape = tuple(int(v) for v in d["image_shape"])
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"image_shape {shape}")
            rca = d.get("afs_rca")
            return cls(
                kind=str(d["kind"]),
                precision=str(d["precision"]),
                image_shape=shape,  # type: ignore[arg-type]
                label_dim=int(d["label_dim"]),
                batch_min=int(d["batch_min"]),
                batch_opt=int(d["batch_opt"]),
                batch_max=int(d["batch_max"]),
                sampler=sampler,
                afs_rca=None if rca is None else tuple(float(v) for v in rca),  # type: ignore[arg-type]
                tap=None if d.get("tap") is None else str(d["tap"]),
                checkpoint_sha256=d.get("checkpoint_sha256"),
                predictor_sha256=d.get("predictor_sha256"),
                network=dict(d.get("network") or {}),
                producer=dict(d.get("producer") or {}),
            )
        except AmedError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: int(inf)
            raise AmedError(f"amed-deploy metadata is malformed: {type(e).__name__}: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> GraphSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise AmedError(f"amed-deploy metadata is not valid JSON: {e}") from None


def spec_from_metadata_props(props: dict[str, str], source: str = "graph") -> GraphSpec:
    """Read the spec from an ONNX model's metadata_props (as a name -> value dict)."""
    if METADATA_KEY not in props:
        raise AmedError(
            f"{source} has no amed-deploy metadata: it was not made by `amed-deploy export` "
            "(export your checkpoint with `amed-deploy export --ckpt edm.pt ...`)"
        )
    return GraphSpec.from_json(props[METADATA_KEY])
