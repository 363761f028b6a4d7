"""Store inspection: a plain-text summary and diagnostic plots of an episodic store.

`summarize(store)` gives counts, the schema, the stats table, the robot extras of seed 001 (height bins,
gripper bins, rotation PCA / k-means) and the report's skipped episodes. `write_plots(store, out_dir)`
writes PNGs: camera frames with the projected EEF trajectory, EEF height / gripper / rotation-PC1
histograms with the stats' bin edges, and 3-D EEF paths (or vector fields over time for joint-only stores).

Plots use matplotlib's object API with the Agg canvas (`plotting.py`: no pyplot, no global backend switch), so
they work headless and leave a notebook's inline backend alone. Every reader of `stats.json` / `report.json` here is
defensive: missing keys give "n/a" in text and a note in a plot title, never an exception.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shardyard.geometry import canonical_hemisphere, canonical_to_reference, mean_quaternion, project, scale_intrinsics
from shardyard.tools.inspect.depth import depth_summary_lines, plot_depth
from shardyard.tools.inspect.plotting import colormap, figure, save
from shardyard.tools.inspect.skipped import skipped_lines

__all__ = ["camera_roles", "eef_pixels", "frames_figure", "robot_prefixes", "summarize", "write_plots"]

log = logging.getLogger(__name__)

_MAX_LISTED = 4        # stats columns with more features than this are shown as a range "lo..hi (n)"
_MAX_VECTOR_FIELDS = 4
_MAX_FEATURES_PLOTTED = 8


# -- store introspection --------------------------------------------------------------------------------
def robot_prefixes(store) -> dict[str, dict[str, str | None]]:
    """Arms of a store: prefix (e.g. "obs", "obs.left") -> {"eef_pos", "eef_quat", "gripper"} field keys
    (None where absent). Field names come from `stats["robot"]` when given, else the `<prefix>.eef_pos`
    naming convention."""
    robot = (store.stats or {}).get("robot") or {}
    out: dict[str, dict[str, str | None]] = {}
    for key in store.schema.keys():
        if key.endswith(".eef_pos"):
            prefix = key[: -len(".eef_pos")]
            extra = robot.get(prefix) or {}
            names = {"eef_pos": extra.get("eef_pos_field", key),
                     "eef_quat": extra.get("eef_quat_field", f"{prefix}.eef_quat"),
                     "gripper": extra.get("gripper_field", f"{prefix}.gripper")}
            out[prefix] = {k: (v if v in store.schema else None) for k, v in names.items()}
    return out


def camera_roles(store) -> list[str]:
    """Camera roles with an image field `obs.rgb.<role>`, in schema order."""
    return [k[len("obs.rgb."):] for k in store.schema.keys() if k.startswith("obs.rgb.")]


def eef_pixels(store, episode: int, camera: str, *, eef_field: str | None = None,
               at_step: int | None = None) -> np.ndarray:
    """Project one episode's EEF positions into a camera's stored image: `(T, 2)` float64 pixels (u, v).

    Uses the episode's `K (3, 3)` and `T_world_cam (4, 4)`, or the per-step field `obs.T_world_cam.<camera>
    (T, 4, 4)` for a moving camera: each step's position in that step's frame, or with `at_step`, every
    position in the frame of step `at_step` (the whole path as that frame sees it). `K` is rescaled when the
    camera's recorded width/height differ from the stored image size. Points at or behind the camera give
    NaN. `eef_field` defaults to the first arm's `eef_pos` (metres, world). Raises `KeyError` when the camera
    or the EEF field is missing.
    """
    if eef_field is None:
        arms = [a["eef_pos"] for a in robot_prefixes(store).values() if a["eef_pos"]]
        if not arms:
            raise KeyError("store has no EEF position field (*.eef_pos)")
        eef_field = arms[0]
    cams = store.episode_meta(episode).get("cameras") or {}
    if camera not in cams or cams[camera].get("K") is None:
        raise KeyError(f"episode {episode} has no calibration for camera {camera!r}")
    cam = cams[camera]
    K = cam["K"]
    image_field = f"obs.rgb.{camera}"
    if image_field in store.schema and cam.get("width") and cam.get("height"):
        h, w = store.schema[image_field].shape[:2]
        if (w, h) != (int(cam["width"]), int(cam["height"])):
            K = scale_intrinsics(K, w / float(cam["width"]), h / float(cam["height"]))
    fields = [eef_field]
    pose_field = f"obs.T_world_cam.{camera}"
    moving = cam.get("moving") or cam.get("T_world_cam") is None
    if moving:
        if pose_field not in store.schema:
            raise KeyError(f"camera {camera!r} moves but the store has no field {pose_field!r}")
        fields.append(pose_field)
    data = store.read(episode, fields)
    T_world_cam = data[pose_field] if moving else cam["T_world_cam"]
    if moving and at_step is not None:
        T_world_cam = T_world_cam[at_step]
    pix, depth = project(data[eef_field].astype(np.float64), K, np.asarray(T_world_cam, dtype=np.float64))
    pix[~(depth > 1e-9)] = np.nan
    return pix


# -- text summary ---------------------------------------------------------------------------------------
def _num(x: Any) -> str:
    """A stats value to 4 significant digits; zero (and a subnormal, a sum's rounding residue of an exact zero,
    which would print as 2.45e-315) as "0"."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "0" if abs(v) < np.finfo(np.float64).tiny else f"{v:.4g}"


def _cell(values: Any) -> str:
    """One stats cell: a scalar, "v xn" for n equal values, a short list "[a b c]", or for many features the
    range "lo..hi (n)"."""
    if values is None:
        return "n/a"
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return str(values)[:24]
    if arr.size == 0:
        return "n/a"
    if arr.size == 1:
        return _num(arr[0])
    if np.all(arr == arr[0]):
        return f"{_num(arr[0])} x{arr.size}"
    if arr.size <= _MAX_LISTED:
        return "[" + " ".join(_num(v) for v in arr) + "]"
    return f"{_num(np.nanmin(arr))}..{_num(np.nanmax(arr))} ({arr.size})"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def summarize(store) -> str:
    """Plain-text summary of a store: path, episode/step counts, split sizes, the fields table (dtype,
    per-step shape, unit, kind), the stats table (count, mean, std, min, max, q01, q99 per field; fields with
    more than 4 features show "lo..hi (n)" ranges), robot extras and the report's skipped episodes."""
    stats, report, manifest = store.stats or {}, store.report or {}, store.manifest or {}
    lengths = np.diff(np.concatenate([[0], np.asarray(store.episode_ends, dtype=np.int64)]))
    lines = [f"Store: {store.url}", f"Format: {manifest.get('format', 'n/a')} v{manifest.get('format_version', '?')}",
             f"Episodes: {store.num_episodes}   Steps: {store.num_steps}"]
    if len(lengths):
        lines.append(f"Episode length: min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
    split = manifest.get("split") or stats.get("split") or {}
    if split:
        lines.append("Split: " + ", ".join(f"{k}={len(v)}" for k, v in split.items()))

    lines += ["", "Fields"]
    rows = [[k, s.dtype, str(s.shape), s.unit or "-", s.kind] for k, s in store.schema.items()]
    lines += _table(["field", "dtype", "shape", "unit", "kind"], rows)

    fstats = stats.get("fields") or {}
    if not stats:
        lines += ["", "Stats: no stats.json"]
    else:
        lines += ["", f"Stats (computed on: {stats.get('computed_on', 'n/a')}"
                      f", {stats.get('num_episodes', '?')} episodes, {stats.get('num_steps', '?')} steps)"]
    if fstats:
        cols = ["count", "mean", "std", "min", "max", "q01", "q99"]
        rows = [[k] + [_cell(v.get(c)) for c in cols] for k, v in fstats.items() if isinstance(v, dict)]
        lines += _table(["field"] + cols, rows)
    elif stats:
        lines.append("  no per-field stats")

    robot = stats.get("robot") or {}
    if robot:
        lines += ["", "Robot extras"]
    for prefix, r in robot.items():
        if not isinstance(r, dict):
            continue
        hb, gb = r.get("height_bins") or {}, r.get("gripper_bins") or {}
        rot = r.get("rotation") or {}
        pca, km = rot.get("pca") or {}, rot.get("kmeans") or {}
        ev = pca.get("explained_variance_ratio") or []
        n_h, n_g = max(len(hb.get("edges") or []) - 1, 0), max(len(gb.get("edges") or []) - 1, 0)
        lines.append(f"  {prefix}: height bins {n_h} over [{_num(hb.get('min'))}, {_num(hb.get('max'))}] m"
                     f" (margin {_num(hb.get('margin'))} of the range); gripper bins {n_g}")
        lines.append(f"  {prefix}: rotation mode {rot.get('recommended_mode', 'n/a')}; PC1 EV "
                     f"{_num(ev[0]) if ev else 'n/a'}; k-means prototypes {len(km.get('prototypes') or [])}")

    if stats.get("depth"):  # seed 003 depth extras (tools/inspect/depth.py)
        lines += depth_summary_lines(stats["depth"])

    skipped = report.get("skipped") or []
    lines += ["", f"Report: {report.get('num_ok', store.num_episodes)} ok, "
                  f"{report.get('num_skipped', len(skipped))} skipped"]
    lines += skipped_lines(skipped)
    notes = report.get("notes") or []
    if notes:
        lines += ["", "Notes"] + [f"  - {n}" for n in notes]
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------------------
def _pick_episodes(store, max_episodes: int) -> list[int]:
    n = min(max_episodes, store.num_episodes)
    return sorted(set(np.linspace(0, store.num_episodes - 1, n).round().astype(int).tolist())) if n > 0 else []


def _all_rows(store, field: str) -> np.ndarray:
    return np.asarray(store.read_rows(field, 0, store.num_steps))


def _edges(stats: dict, prefix: str, *path: str) -> np.ndarray | None:
    node: Any = ((stats.get("robot") or {}).get(prefix)) or {}
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    return None if node is None else np.asarray(node, dtype=np.float64).ravel()


def _hist(ax, values: np.ndarray, edges: np.ndarray | None, title: str, xlabel: str) -> None:
    ax.hist(values, bins=50, color="tab:blue", alpha=0.8)
    if edges is not None and edges.size:
        for e in edges:
            ax.axvline(e, color="tab:red", lw=0.6, alpha=0.7)
        title += f" ({edges.size - 1} bins)"
    else:
        title += " (no bin edges in stats.json)"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)


def _short(text: str, n: int = 90) -> str:
    """`text`, cut in the middle to at most `n` characters."""
    return text if len(text) <= n else text[: n // 2 - 1] + "..." + text[-(n - n // 2 - 2):]


def _frame_paths(store, ep: int, role: str, arms: dict, steps: np.ndarray) -> tuple[dict, str]:
    """Per arm prefix, `{t: (T, 2) pixels}` of the episode's EEF path as frame `t` of camera `role` sees it
    (one projection for a fixed camera; per frame, from that frame's pose, for a moving one), and a note
    saying why there is no overlay (else "")."""
    cam = (store.episode_meta(ep).get("cameras") or {}).get(role) or {}
    moving = bool(cam.get("moving")) or (cam.get("K") is not None and cam.get("T_world_cam") is None)
    out: dict[str, dict[int, np.ndarray]] = {}
    note = "" if any(a["eef_pos"] for a in arms.values()) else "no overlay: no EEF field"
    for prefix, arm in arms.items():
        if not arm["eef_pos"]:
            continue
        try:
            if moving:
                out[prefix] = {int(t): eef_pixels(store, ep, role, eef_field=arm["eef_pos"], at_step=int(t))
                               for t in steps}
            else:
                pix = eef_pixels(store, ep, role, eef_field=arm["eef_pos"])
                out[prefix] = {int(t): pix for t in steps}
        except KeyError as exc:
            note = f"no overlay: {exc.args[0]}"
    return out, note


def frames_figure(store, role: str, episodes: list[int], n_frames: int = 4):
    """The `frames_<role>.png` figure (matplotlib `Figure`, Agg): episodes x `n_frames` frames of camera
    `role`, one row per episode under its own heading (index and key, cut to fit), each frame titled `t=STEP`;
    the whole projected EEF path (line) and the current EEF (red circle), for a moving camera the path as each
    frame's camera pose sees it (`eef_pixels(..., at_step=t)`)."""
    field, arms = f"obs.rgb.{role}", robot_prefixes(store)
    fig = figure(figsize=(3 * n_frames, 2.7 * len(episodes) + 0.5), layout="constrained")
    rows = np.atleast_1d(fig.subfigures(len(episodes), 1))
    colors = ["yellow", "cyan", "magenta", "lime"]
    moving = False
    for sub, ep in zip(rows, episodes):
        T = store.episode_length(ep)
        steps = np.linspace(0, T - 1, n_frames).round().astype(int)
        cam = (store.episode_meta(ep).get("cameras") or {}).get(role) or {}
        moving |= bool(cam.get("moving")) or (cam.get("K") is not None and cam.get("T_world_cam") is None)
        paths, note = _frame_paths(store, ep, role, arms, steps)
        sub.suptitle(f"episode {ep}: {_short(str(store.episode_keys[ep]))}" + (f" ({note})" if note else ""),
                     fontsize=8)
        for ax, t in zip(np.atleast_1d(sub.subplots(1, n_frames)), steps):
            img = store.read(ep, [field], start=int(t), stop=int(t) + 1)[field][0]
            ax.imshow(img)
            for i, per_step in enumerate(paths.values()):
                pix = per_step[int(t)]
                ax.plot(pix[:, 0], pix[:, 1], "-", color=colors[i % len(colors)], lw=1, alpha=0.8)
                if np.all(np.isfinite(pix[t])):
                    ax.plot(pix[t, 0], pix[t, 1], "o", ms=6, mfc="none", mec="red", mew=2)
            ax.set_xlim(-0.5, img.shape[1] - 0.5)
            ax.set_ylim(img.shape[0] - 0.5, -0.5)
            ax.set_title(f"t={t}", fontsize=7)
            ax.axis("off")
    has_eef = any(a["eef_pos"] for a in arms.values())
    what = ("EEF path as each frame's camera pose sees it (line) and current EEF (red circle)" if moving else
            "EEF path (line) and current EEF (red circle)")
    fig.suptitle(f"camera {role}: " + (what if has_eef else "no EEF field, no overlay"), fontsize=10)
    return fig


def _pc1(quats: np.ndarray, pca: dict) -> tuple[np.ndarray, str]:
    """PC1 coordinate `(N,)` of xyzw quats `(N, 4)` in the stats' hemisphere (`q . reference >= 0`, or w >= 0 for
    stats without a reference); fits PCA here, around Markley's mean, when stats lack it."""
    q = np.asarray(quats, dtype=np.float64)
    mean, basis, ref = pca.get("mean"), pca.get("basis"), pca.get("reference")
    if mean is not None and basis is not None:
        q = canonical_to_reference(q, np.asarray(ref, dtype=np.float64)) if ref is not None else \
            canonical_hemisphere(q)
        return (q - np.asarray(mean, dtype=np.float64)) @ np.asarray(basis, dtype=np.float64).reshape(-1, 4)[0], ""
    q = canonical_to_reference(q, mean_quaternion(q))
    mean = q.mean(axis=0)
    _, s, vt = np.linalg.svd(q - mean, full_matrices=False)
    ev = (s[0] ** 2 / max(float((s ** 2).sum()), 1e-12)) if s.size else float("nan")
    return (q - mean) @ vt[0], f" [PCA fitted here, EV {ev:.2f}; none in stats.json]"


def _plot_robot(store, arms: dict, episodes: list[int], out: Path, written: list[Path]) -> None:
    stats = store.stats or {}
    n = len(arms)
    specs = [("eef_pos", "eef_height.png", "EEF height (world z)", "z (m)"),
             ("gripper", "gripper.png", "gripper", "opening [0, 1]"),
             ("eef_quat", "rotation_pc1.png", "rotation PC1", "PC1")]
    for key, name, label, xlabel in specs:
        present = [(p, a) for p, a in arms.items() if a[key]]
        if not present:
            continue
        fig = figure(figsize=(5 * n, 3.5))
        axes = np.asarray(fig.subplots(1, len(present), squeeze=False))[0]
        for ax, (prefix, arm) in zip(axes, present):
            values = _all_rows(store, arm[key]).astype(np.float64)
            if key == "eef_pos":
                _hist(ax, values[:, 2], _edges(stats, prefix, "height_bins", "edges"), f"{prefix}: {label}", xlabel)
            elif key == "gripper":
                _hist(ax, values.ravel(), _edges(stats, prefix, "gripper_bins", "edges"), f"{prefix}: {label}",
                      xlabel)
            else:
                rot = (((stats.get("robot") or {}).get(prefix) or {}).get("rotation")) or {}
                pc1, note = _pc1(values.reshape(-1, 4), rot.get("pca") or {})
                mode = rot.get("recommended_mode", "n/a")
                _hist(ax, pc1, _edges(stats, prefix, "rotation", "pca", "pc1_edges"),
                      f"{prefix}: {label}, mode {mode}{note}", xlabel)
        save(fig, out / name, written)

    fig = figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    cmap = colormap("viridis")
    for j, ep in enumerate(episodes):
        for prefix, arm in arms.items():
            if arm["eef_pos"]:
                p = store.read(ep, [arm["eef_pos"]])[arm["eef_pos"]]
                ax.plot(p[:, 0], p[:, 1], p[:, 2], color=cmap(j / max(len(episodes) - 1, 1)), lw=1.2,
                        label=f"{store.episode_keys[ep]} {prefix}" if len(arms) > 1 else store.episode_keys[ep])
                ax.scatter(*p[0], color="green", s=12)
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_zlabel("z (m)")
    ax.set_title("EEF paths (world; green = start)", fontsize=10)
    ax.legend(fontsize=6, loc="upper left")
    save(fig, out / "eef_paths_3d.png", written)


def _plot_vectors(store, episodes: list[int], path: Path, written: list[Path]) -> bool:
    """First few vector/scalar fields over time (joint-only stores): one panel per field, colour = episode."""
    fields = store.schema.of_kind("vector", "scalar")[:_MAX_VECTOR_FIELDS]
    if not fields or not episodes:
        return False
    fig = figure(figsize=(8, 2.4 * len(fields)))
    axes = np.asarray(fig.subplots(len(fields), 1, squeeze=False))[:, 0]
    cmap = colormap("tab10")
    for ax, f in zip(axes, fields):
        spec = store.schema[f]
        for j, ep in enumerate(episodes):
            x = np.asarray(store.read(ep, [f])[f], dtype=np.float64).reshape(store.episode_length(ep), -1)
            ax.plot(x[:, :_MAX_FEATURES_PLOTTED], color=cmap(j % 10), lw=0.8, alpha=0.8)
        n_feat = int(np.prod(spec.shape, dtype=np.int64)) if spec.shape else 1
        shown = f", first {_MAX_FEATURES_PLOTTED} of {n_feat} features" if n_feat > _MAX_FEATURES_PLOTTED else ""
        ax.set_title(f"{f} ({spec.unit or 'no unit'}){shown}; colour = episode", fontsize=9)
        ax.set_xlabel("step")
    save(fig, path, written)
    return True


def write_plots(store, out_dir: str | Path, *, max_episodes: int = 4, frames_per_episode: int = 4) -> list[Path]:
    """Write diagnostic PNGs for `store` into `out_dir` (created) and return their paths.

    - `frames_<camera>.png`: `max_episodes` (evenly spaced) x `frames_per_episode` frames of each camera,
      with the projected EEF trajectory of the whole episode and the current EEF marked (see `eef_pixels`);
      a frame's title says why when the overlay is skipped (no EEF field, no calibration).
    - `eef_height.png`, `gripper.png`, `rotation_pc1.png`: histograms over all steps of world-z EEF height
      (m), gripper opening and the PC1 coordinate of the quats (in the stats' reference hemisphere), with the
      stats' bin edges.
    - `eef_paths_3d.png`: 3-D EEF paths, one coloured line per episode (and arm).
    - `vectors.png` instead of the robot plots when the store has no EEF: vector fields over time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    episodes = _pick_episodes(store, max_episodes)
    if not episodes:
        log.warning("store %s has no episodes; no plots written", store.url)
        return written
    arms = robot_prefixes(store)
    n_frames = max(1, int(frames_per_episode))
    for role in camera_roles(store):
        save(frames_figure(store, role, episodes, n_frames), out / f"frames_{role}.png", written)
    if any(a["eef_pos"] for a in arms.values()):
        _plot_robot(store, arms, episodes, out, written)
    elif not _plot_vectors(store, episodes, out / "vectors.png", written):
        log.info("store %s has no EEF and no vector fields to plot", store.url)
    if store.schema.of_kind("depth"):  # RGB beside colour-mapped depth, depth histogram (tools/inspect/depth.py)
        plot_depth(store, episodes, out, written)
    return written
