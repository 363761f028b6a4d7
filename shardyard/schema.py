"""Field specs, schemas and the `Episode` unit of ingest (DESIGN.md, "Core interfaces")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardyard.errors import SchemaError, UnsafePathError
from shardyard.stores.safe_paths import safe_relative

__all__ = ["Episode", "FieldSpec", "FRAME_KINDS", "KINDS", "SKIP_KINDS", "Schema"]

KINDS = ("image", "depth", "vector", "scalar", "text", "video", "tokens", "pose")
# Stored one frame per chunk inside zarr shards: the reader and the loaders read them by exact row runs, the
# stats sample them frame by frame (`image_frame_stride`).
FRAME_KINDS = ("image", "depth", "tokens")
# No numeric per-step array to serve or summarise: text lives in the episode metadata, video in encoded files.
SKIP_KINDS = ("text", "video")


@dataclass(frozen=True)
class FieldSpec:
    """Per-step description of one field; the stored array is `(T, *shape)`.

    `unit` is "m", "rad", "s", "Hz", "normalised" or None; `kind` is one of `KINDS` ("pose" is a `(4, 4)`
    homogeneous transform). `names` optionally labels the last axis (e.g. joint names).
    """

    dtype: str
    shape: tuple[int, ...]
    unit: str | None = None
    kind: str = "vector"
    names: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(f"unknown field kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        np.dtype(self.dtype)  # raises TypeError on a bad dtype name

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: dtype, shape, unit, kind (and names, description when set)."""
        out: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape), "unit": self.unit,
                               "kind": self.kind}
        if self.names is not None:
            out["names"] = list(self.names)
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FieldSpec":
        """Inverse of `to_dict`."""
        names = d.get("names")
        return cls(dtype=d["dtype"], shape=tuple(d["shape"]), unit=d.get("unit"), kind=d.get("kind", "vector"),
                   names=None if names is None else tuple(names), description=d.get("description", ""))


@dataclass(frozen=True)
class Schema:
    """Ordered mapping of field key (dotted, e.g. `obs.rgb.top`) to `FieldSpec`. Raises `UnsafePathError`
    for a key that, as the folder `data/<key>`, would lead outside the store (`..`, absolute, ...)."""

    fields: dict[str, FieldSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a field key becomes the folder `data/<key>`, and keys come from manifests and source metadata
        # (LeRobot's info.json): one that leads outside the store raises `UnsafePathError`
        for key in self.fields:
            try:
                safe_relative(key)
            except UnsafePathError as e:
                raise UnsafePathError(f"field key: {e.reason}", field=str(key)) from None

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def __getitem__(self, key: str) -> FieldSpec:
        return self.fields[key]

    def __iter__(self):
        return iter(self.fields)

    def keys(self) -> list[str]:
        """Field keys in schema order."""
        return list(self.fields)

    def items(self):
        """`(field, FieldSpec)` pairs in schema order."""
        return self.fields.items()

    def of_kind(self, *kinds: str) -> list[str]:
        """Field keys whose spec kind is one of `kinds`, in schema order."""
        return [k for k, s in self.fields.items() if s.kind in kinds]

    def to_dict(self) -> dict[str, Any]:
        """`{field: FieldSpec.to_dict()}` in schema order (JSON-able)."""
        return {k: s.to_dict() for k, s in self.fields.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        """Inverse of `to_dict`."""
        return cls({k: FieldSpec.from_dict(v) for k, v in d.items()})

    def validate(self, episode: "Episode", *, path: str | None = None) -> None:
        """Check every field of `episode` against this schema and raise one `SchemaError` listing every
        mismatch by field (missing, extra, dtype, per-step shape, unequal lengths, non-finite floats)."""
        problems: list[str] = []
        missing = [k for k in self.fields if k not in episode.steps]
        extra = [k for k in episode.steps if k not in self.fields]
        problems += [f"{k}: missing" for k in missing] + [f"{k}: not in schema" for k in extra]
        lengths = {}
        for k, spec in self.fields.items():
            arr = episode.steps.get(k)
            if arr is None:
                continue
            if arr.dtype != np.dtype(spec.dtype):
                problems.append(f"{k}: dtype {arr.dtype}, expected {spec.dtype}")
            if tuple(arr.shape[1:]) != spec.shape:
                problems.append(f"{k}: per-step shape {tuple(arr.shape[1:])}, expected {spec.shape}")
            if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                problems.append(f"{k}: contains NaN or inf")
            lengths[k] = arr.shape[0] if arr.ndim else -1
        if len(set(lengths.values())) > 1:
            problems.append("unequal lengths: " + ", ".join(f"{k}={n}" for k, n in lengths.items()))
        if problems:
            fields = sorted({p.split(":")[0] for p in problems if not p.startswith("unequal")})
            raise SchemaError("; ".join(problems), path=path, key=episode.key,
                              field=",".join(fields) if fields else None)


@dataclass
class Episode:
    """One episode: the unit of atomic write, resume and error reporting. A still image is a 1-step episode.

    `steps` maps field key -> `(T, *spec.shape)` array; `meta` holds task, fps (Hz), source path and, per
    camera, `K (3, 3)` and `T_world_cam (4, 4)` (OpenCV convention, camera-to-world).
    """

    key: str
    steps: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        """Steps `T` of the episode (the leading length of its arrays; 0 when it has no field)."""
        return int(next(iter(self.steps.values())).shape[0]) if self.steps else 0
