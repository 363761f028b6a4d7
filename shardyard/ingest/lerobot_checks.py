"""Checks of a LeRobot dataset's metadata against its data (`ingest.lerobot`): what `meta/info.json` declares
(per-feature shapes, `fps`, video features) is compared with what the parquet files and videos hold, and a
contradiction is a named report row (or, for the whole dataset, a named refusal), never a silent guess. Also
the decoding of `image` features (encoded image bytes in the parquet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shardyard.errors import ConfigError, SourceError
from shardyard.schema import FieldSpec

__all__ = ["FPS_TOLERANCE", "camera_name", "check_timestamps", "declared_array", "decode_images", "skipped_cameras"]

FPS_TOLERANCE = 0.05  # relative: LeRobot writes timestamps as frame_index / fps, exact to float32 rounding


def camera_name(feature: str) -> str:
    """`observation.images.<name>` -> `<name>`."""
    return feature.rsplit(".", 1)[-1] if feature.startswith("observation.images.") else feature


def skipped_cameras(video_features: list[str], cameras: tuple[str, ...] | None, missing: list[str],
                    info_path: Path) -> set[str]:
    """Video features not to store: those `cameras` leaves out (None keeps all, `()` or `("none",)` none).
    Raises `ConfigError` naming `info_path` when `cameras` names a camera the dataset does not list, or when
    a camera to store has no video file for any episode (`missing`): the dataset is incomplete (videos not
    downloaded?), which is refused rather than stored without that camera unless asked (`--camera`)."""
    names = {camera_name(f): f for f in video_features}
    wanted = set(names) if cameras is None else {c for c in cameras if c.lower() != "none"}
    unknown = sorted(wanted - set(names))
    if unknown:
        raise ConfigError(f"camera(s) {unknown} not among the dataset's video features {sorted(names)}",
                          path=str(info_path), field="cameras")
    gone = sorted(c for c in wanted if names[c] in missing)
    if gone:
        keep = sorted(wanted - set(gone))
        raise ConfigError(f"no video file for any episode of camera(s) {gone} (listed in meta/info.json; videos not "
                          f"downloaded?); to store the dataset without them pass "
                          f"{' '.join(f'--camera {c}' for c in keep) or '--camera none'}",
                          path=str(info_path), field=", ".join(f"observation.images.{c}" for c in gone))
    return {f for c, f in names.items() if c not in wanted}


def declared_array(arr: np.ndarray, n: int, spec: FieldSpec, feature: str, *, path: str, key: str, field: str,
                   info_path: Path) -> np.ndarray:
    """A parquet column `arr` (`(n, ...)`) reshaped to the `(n, *spec.shape)` that meta/info.json declares,
    in the declared dtype. Raises `SourceError` naming the field when the column holds another number of
    values per row than declared, or values that are not numbers."""
    per_row = int(np.prod(spec.shape, dtype=np.int64))
    if arr.dtype.kind not in "biuf":
        raise SourceError(f"column {feature} holds {arr.dtype} values, meta/info.json declares {spec.dtype}",
                          path=path, key=key, field=field)
    if arr.size != n * per_row:
        got = arr.size // n if n else 0
        raise SourceError(f"column {feature} holds {got} value(s) per row, meta/info.json ({info_path}) declares "
                          f"shape {list(spec.shape) or [1]}", path=path, key=key, field=field)
    return arr.reshape((n,) + spec.shape).astype(spec.dtype, copy=False)


def check_timestamps(ts: np.ndarray, fps: float, *, path: str, key: str, info_path: Path) -> None:
    """The `timestamp` column of one episode, checked: finite, increasing, and `1 / fps` apart (the median
    interval within `FPS_TOLERANCE`, relative). Raises `SourceError` (field `timestamp`, or `fps` naming
    meta/info.json when the declared rate contradicts the timestamps)."""
    if not np.all(np.isfinite(ts)):
        raise SourceError("NaN or inf timestamp", path=path, key=key, field="timestamp")
    dt = np.diff(ts)
    if len(dt) and np.any(dt <= 0):
        bad = int(np.argmax(dt <= 0))
        raise SourceError(f"timestamps do not increase at row {bad + 1} ({ts[bad]:.4f} s -> {ts[bad + 1]:.4f} s)",
                          path=path, key=key, field="timestamp")
    if len(dt) and abs(float(np.median(dt)) * fps - 1.0) > FPS_TOLERANCE:
        raise SourceError(f"meta/info.json fps {fps:g} contradicts the timestamps (median step "
                          f"{np.median(dt) * 1e3:.2f} ms, {1.0 / np.median(dt):.3f} Hz in {path})",
                          path=str(info_path), key=key, field="fps")


def decode_images(items: list, size: tuple[int, int] | None, *, path: str, key: str, field: str) -> np.ndarray:
    """An `image` feature's parquet cells (`{"bytes": ...}`) as `(n, H, W, 3) uint8`, resized to `size = (W, H)`
    (area filter) when given. Raises `SourceError` naming the row that does not decode."""
    import io

    from PIL import Image

    out = []
    for row, item in enumerate(items):
        try:
            with Image.open(io.BytesIO(item["bytes"])) as im:
                im = im.convert("RGB")
                if size:
                    im = im.resize(size, Image.Resampling.BOX)
                out.append(np.asarray(im))
        except Exception as e:
            raise SourceError(f"cannot decode the image of row {row}: {type(e).__name__}: {e}", path=path, key=key,
                              field=field) from e
    shapes = sorted({a.shape for a in out})
    if len(shapes) > 1:
        raise SourceError(f"images differ in size: {shapes}", path=path, key=key, field=field)
    return np.stack(out)
