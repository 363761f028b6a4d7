"""The bad-input corpus (issue 21): damaged copies of the shared samples, one kind of damage per episode.

Each `*_corpus(dest)` writes one input folder per source holding one episode per kind of damage beside good
episodes, and returns a `Corpus`: the input, the CLI arguments of its ingest, the good episode keys (all must
be stored) and one `Bad` per kind (the report row its episode must get: key, field, file). One ingest per
source covers every kind at once (`tests/test_bad_inputs.py`).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YAM_EPISODES = SHARED / "yam" / "episodes"
YAM_MODEL = SHARED / "yam" / "model" / "station" / "yam_station_linear_4310_d405" / \
    "yam_station_linear_4310_d405_sim_scene.xml"
ROBOSUITE = SHARED / "robosuite_hdf5"
G1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
NYU_PAIR = SHARED / "nyu_depth_v2" / "mmseg_bts_style" / "bookstore_0001d_00001"
WEBVID_CSV = SHARED / "webvid" / "webvid_2M_val_style_rows01-13.csv"
WEBVID_CLIP = SHARED / "webvid" / "clips" / "mmaction2_rawvideo_part_0.mp4"


@dataclass(frozen=True)
class Bad:
    """One kind of damage: its `kind`, the episode `key` it is in, the `field` and the `file` (name) its
    report row must name."""

    kind: str
    key: str
    field: str
    file: str


@dataclass
class Corpus:
    """One source's damaged input: `root`, extra CLI `args`, `good` keys (stored) and `bad` kinds."""

    source: str
    root: Path
    args: list[str] = field(default_factory=list)
    good: list[str] = field(default_factory=list)
    bad: list[Bad] = field(default_factory=list)


def _npy(path: Path, f: Callable[[np.ndarray], np.ndarray]) -> None:
    np.save(path, f(np.load(path)))


def _json(path: Path, f: Callable[[dict], object]) -> None:
    path.write_text(json.dumps(f(json.loads(path.read_text()))))


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _set(d: dict, **kw) -> dict:
    return {**d, **kw}


# -- YAM (i2rt recorder layout, the real episodes) ------------------------------------------------------------
# kind -> (damage to an episode folder, field, file)
YAM_KINDS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "joint_pos_5_columns": (lambda e: _npy(e / "left-joint_pos.npy", lambda a: a[:, :5]),
                            "obs.joint_pos", "left-joint_pos.npy"),
    "joint_pos_3d": (lambda e: _npy(e / "left-joint_pos.npy", lambda a: a[:, :, None]),
                     "obs.joint_pos", "left-joint_pos.npy"),
    "joint_pos_strings": (lambda e: _npy(e / "left-joint_pos.npy", lambda a: a.astype(str)),
                          "obs.joint_pos", "left-joint_pos.npy"),
    "joint_pos_nan": (lambda e: _npy(e / "left-joint_pos.npy", lambda a: np.where(np.arange(len(a))[:, None] == 9,
                                                                                  np.nan, a)),
                      "obs.joint_pos", "left-joint_pos.npy"),
    "zero_steps": (lambda e: _npy(e / "left-joint_pos.npy", lambda a: a[:0]), "obs.joint_pos", "left-joint_pos.npy"),
    "gripper_3_columns": (lambda e: _npy(e / "left-gripper_pos.npy", lambda a: np.repeat(a.reshape(len(a), 1), 3, 1)),
                          "obs.gripper", "left-gripper_pos.npy"),
    "gripper_inf": (lambda e: _npy(e / "left-gripper_pos.npy", lambda a: np.where(np.arange(len(a)).reshape(
        a.shape[:1] + (1,) * (a.ndim - 1)) == 3, np.inf, a)), "obs.gripper", "left-gripper_pos.npy"),
    "gripper_missing": (lambda e: (e / "left-gripper_pos.npy").unlink(), "obs.gripper", "left-gripper_pos.npy"),
    "gripper_pickled": (lambda e: np.save(e / "left-gripper_pos.npy", np.array([{"x": 1}], dtype=object),
                                          allow_pickle=True), "obs.gripper", "left-gripper_pos.npy"),
    "action_short": (lambda e: _npy(e / "action-left-joint.npy", lambda a: a[:-5]), "action", "action-left-joint.npy"),
    "action_5_columns": (lambda e: _npy(e / "action-left-joint.npy", lambda a: a[:, :5]),
                         "action", "action-left-joint.npy"),
    "metadata_a_list": (lambda e: _json(e / "metadata.json", lambda m: [m]), "metadata", "metadata.json"),
    "metadata_truncated": (lambda e: (e / "metadata.json").write_text((e / "metadata.json").read_text()[:40]),
                           "metadata", "metadata.json"),
    "control_hz_text": (lambda e: _json(e / "metadata.json", lambda m: _set(m, control_hz="fast")),
                        "control_hz", "metadata.json"),
    "control_hz_contradicts_timestamps": (lambda e: _json(e / "metadata.json", lambda m: _set(m, control_hz=7)),
                                          "control_hz", "metadata.json"),
    "cameras_without_role": (lambda e: _json(e / "metadata.json", lambda m: _set(m, cameras=[
        {k: v for k, v in c.items() if k != "role"} for c in m["cameras"]])), "cameras", "metadata.json"),
    "arm_names_not_a_list": (lambda e: _json(e / "metadata.json", lambda m: _set(m, arm_names="left")),
                             "arm_names", "metadata.json"),
    "num_frames_contradicts": (lambda e: _json(e / "metadata.json", lambda m: _set(m, num_frames=m["num_frames"] + 7)),
                               "num_frames", "metadata.json"),
    "timestamps_strings": (lambda e: _npy(e / "top-timestamp.npy", lambda a: np.array([f"t{x}" for x in a])),
                           "timestamp", "top-timestamp.npy"),
    "timestamps_decrease": (lambda e: _npy(e / "top-timestamp.npy", lambda a: a[::-1].copy()),
                            "timestamp", "top-timestamp.npy"),
    "timestamps_short": (lambda e: _npy(e / "top-timestamp.npy", lambda a: a[:-3]), "timestamp", "top-timestamp.npy"),
    "video_truncated": (lambda e: _cut(e / "top-images-rgb.mp4", 4000), "obs.rgb.top", "top-images-rgb.mp4"),
    "video_not_a_video": (lambda e: (e / "top-images-rgb.mp4").write_bytes(bytes(range(256)) * 64),
                          "obs.rgb.top", "top-images-rgb.mp4"),
    "video_missing": (lambda e: (e / "top-images-rgb.mp4").unlink(), "obs.rgb.top", "top-images-rgb.mp4"),
}


def yam_corpus(dest: Path) -> Corpus:
    """Two real episodes as they are, and a copy of the first with each `YAM_KINDS` damage."""
    eps = sorted(p.parent for p in YAM_EPISODES.rglob("metadata.json"))
    good = [eps[0], eps[-1]]
    corpus = Corpus("yam", dest, ["--robot-model", YAM_MODEL, "--image-size", "80x60", "--camera", "top"])
    for ep in good:
        shutil.copytree(ep, dest / ep.relative_to(YAM_EPISODES))
        corpus.good.append(ep.relative_to(YAM_EPISODES).as_posix())
    for kind, (damage, fld, file) in YAM_KINDS.items():
        copy = dest / "damaged" / kind
        shutil.copytree(good[0], copy)
        damage(copy)
        corpus.bad.append(Bad(kind, f"damaged/{kind}", fld, file))
    return corpus


# -- LIBERO / robomimic / robosuite HDF5 ------------------------------------------------------------------------
def _h5_edit(path: Path, edit: Callable[[h5py.Group], None]) -> None:
    with h5py.File(path, "a") as f:
        edit(f["data/demo_1"])


def _replace(g: h5py.Group, name: str, value) -> None:
    del g[name]
    g[name] = value


# kind -> (damage to a copy of robosuite_lift_panda.hdf5 (one demo), key suffix, field)
ROBOSUITE_KINDS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "truncated_file": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "data", "data"),
    "not_hdf5": (lambda p: p.write_text("this is not an HDF5 file\n" * 20), "data", "data"),
    "empty_file": (lambda p: p.write_bytes(b""), "data", "data"),
    "no_data_group": (lambda p: h5py.File(p, "w").close(), "data", "data"),
    "states_byte_strings": (lambda p: _h5_edit(p, lambda g: _replace(g, "states", np.array(
        [f"{i}".encode() for i in range(g["states"].shape[0])], dtype="S8"))), "demo_1", "sim_state"),
    "states_one_number_per_step": (lambda p: _h5_edit(p, lambda g: _replace(g, "states", g["states"][:, 0])),
                                   "demo_1", "sim_state"),
    "states_scalar": (lambda p: _h5_edit(p, lambda g: _replace(g, "states", 3.0)), "demo_1", "sim_state"),
    "actions_nan": (lambda p: _h5_edit(p, lambda g: g["actions"].__setitem__((5, 2), np.nan)), "demo_1", "action"),
    "actions_text": (lambda p: _h5_edit(p, lambda g: _replace(g, "actions", np.array(
        ["up"] * g["actions"].shape[0], dtype=h5py.string_dtype()))), "demo_1", "action"),
    "actions_6_wide": (lambda p: _h5_edit(p, lambda g: _replace(g, "actions", g["actions"][:, :6])),
                       "demo_1", "action"),
    "actions_shorter": (lambda p: _h5_edit(p, lambda g: _replace(g, "actions", g["actions"][:-10])),
                        "demo_1", "action"),
    "demo_without_arrays": (lambda p: _h5_edit(p, lambda g: [g.__delitem__(k) for k in list(g)]), "demo_1",
                            "sim_state"),
}


def robosuite_corpus(dest: Path) -> Corpus:
    """A folder of copies of the real one-demo `robosuite_lift_panda.hdf5`: one as it is, one per damage."""
    dest.mkdir(parents=True)
    corpus = Corpus("libero", dest)
    shutil.copy(ROBOSUITE / "robosuite_lift_panda.hdf5", dest / "a_good.hdf5")
    corpus.good.append("a_good/demo_1")
    for kind, (damage, demo, fld) in ROBOSUITE_KINDS.items():
        path = dest / f"{kind}.hdf5"
        shutil.copy(ROBOSUITE / "robosuite_lift_panda.hdf5", path)
        path.chmod(0o644)
        damage(path)
        corpus.bad.append(Bad(kind, f"{kind}/{demo}", fld, path.name))
    return corpus


LIBERO_LAYOUT_BAD = (Bad("image_float", "TASK_demo/demo_1", "obs.rgb.agentview", "TASK_demo.hdf5"),
                     Bad("image_grey_no_channels", "TASK_demo/demo_2", "obs.rgb.agentview", "TASK_demo.hdf5"),
                     Bad("image_missing", "TASK_demo/demo_3", "obs.rgb.agentview", "TASK_demo.hdf5"),
                     Bad("orientation_inf", "TASK_demo/demo_4", "obs.eef_quat", "TASK_demo.hdf5"),
                     Bad("image_other_size", "TASK_demo/demo_5", "obs.rgb.eye_in_hand", "TASK_demo.hdf5"))


def libero_layout_corpus(dest: Path, write_libero_file: Callable[..., Path]) -> Corpus:
    """One LIBERO-layout file (`libero_fixtures.write_libero_file`; demo_0 good) whose other demos are damaged."""
    path = write_libero_file(dest / "TASK_demo.hdf5", num_demos=6, steps=8, size=32)
    with h5py.File(path, "a") as f:
        d = f["data"]
        _replace(d["demo_1/obs"], "agentview_rgb", d["demo_1/obs/agentview_rgb"][()].astype(np.float32))
        _replace(d["demo_2/obs"], "agentview_rgb", d["demo_2/obs/agentview_rgb"][()][..., 0])
        del d["demo_3/obs/agentview_rgb"]
        ori = d["demo_4/obs/ee_ori"][()]
        ori[2, 1] = np.inf
        _replace(d["demo_4/obs"], "ee_ori", ori)
        _replace(d["demo_5/obs"], "eye_in_hand_rgb", d["demo_5/obs/eye_in_hand_rgb"][()][:, :16, :16])
    return Corpus("libero", dest, [], ["TASK_demo/demo_0"], list(LIBERO_LAYOUT_BAD))


# -- LeRobot v2.1 (the real G1 episodes, cut to 30 rows) --------------------------------------------------------
ROWS = 30


def _g1_table(idx: int, source: int = 1) -> pa.Table:
    t = pq.read_table(G1 / f"data/chunk-000/episode_{source:06d}.parquet").slice(0, ROWS)
    return t.set_column(t.schema.get_field_index("episode_index"), "episode_index",
                        pa.array(np.full(ROWS, idx, np.int64)))


def _column(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, values)


def _state(t: pa.Table, f: Callable[[np.ndarray], np.ndarray], typ=None) -> pa.Table:
    state = np.stack(t.column("observation.state").to_numpy(zero_copy_only=False))
    new = f(state)
    return _column(t, "observation.state", pa.array(list(new), type=typ))


# kind -> (table edit, or None; file edit (dataset, parquet path, video path) or None; field; file name pattern)
LEROBOT_KINDS: dict[str, tuple] = {
    "state_25_values": (lambda t: _state(t, lambda s: s[:, :25], pa.list_(pa.float32())), None, "obs.state",
                        "parquet"),
    "state_strings": (lambda t: _state(t, lambda s: s.astype(str), pa.list_(pa.string())), None, "obs.state",
                      "parquet"),
    "state_nan": (lambda t: _state(t, lambda s: np.where(np.arange(len(s))[:, None] == 4, np.nan, s).astype(
        np.float32), pa.list_(pa.float32(), 26)), None, "obs.state", "parquet"),
    "action_column_missing": (lambda t: t.drop_columns(["action"]), None, "action", "parquet"),
    "timestamp_column_missing": (lambda t: t.drop_columns(["timestamp"]), None, "timestamp", "parquet"),
    "timestamps_decrease": (lambda t: _column(t, "timestamp", pa.array(
        t.column("timestamp").to_numpy()[::-1].copy())), None, "timestamp", "parquet"),
    "timestamp_nan": (lambda t: _column(t, "timestamp", pa.array(np.where(
        np.arange(ROWS) == 7, np.nan, t.column("timestamp").to_numpy()).astype(np.float32))), None, "timestamp",
                      "parquet"),
    "timestamps_at_7_fps": (lambda t: _column(t, "timestamp", pa.array((np.arange(ROWS) / 7.0).astype(np.float32))),
                            None, "fps", "info.json"),
    "rows_of_another_episode": (lambda t: _column(t, "episode_index", pa.array(np.full(ROWS, 999, np.int64))), None,
                                "length", "parquet"),
    "fewer_rows_than_meta": (lambda t: t.slice(0, ROWS - 5), None, "length", "parquet"),
    "parquet_missing": (None, lambda p, v: p.unlink(), "data", "parquet"),
    "parquet_garbage": (None, lambda p, v: p.write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1"), "data", "parquet"),
    "video_missing": (None, lambda p, v: v.unlink(), "obs.rgb.cam_high", "mp4"),
    "video_garbage": (None, lambda p, v: (v.unlink(), v.write_bytes(bytes(range(256)) * 32)), "obs.rgb.cam_high",
                      "mp4"),
    "frames_not_at_timestamps": (lambda t: _column(t, "timestamp", pa.array(
        (1000.0 + np.arange(ROWS) / 30.0).astype(np.float32))), None, "obs.rgb.cam_high", "mp4"),
}


def lerobot_corpus(dest: Path) -> Corpus:
    """A v2.1 dataset with the real G1 episodes 1 and 2 (30 rows each) and one damaged copy of episode 1 per
    `LEROBOT_KINDS` kind (its video a link to episode 1's)."""
    meta = dest / "meta"
    meta.mkdir(parents=True)
    shutil.copy(G1 / "meta" / "info.json", meta / "info.json")
    shutil.copy(G1 / "meta" / "tasks.jsonl", meta / "tasks.jsonl")
    data, videos = dest / "data" / "chunk-000", dest / "videos" / "chunk-000" / "observation.images.cam_high"
    data.mkdir(parents=True)
    videos.mkdir(parents=True)
    task = ["Pick up the yellow bottle on the table."]
    listed = []
    corpus = Corpus("lerobot", dest)
    for i in (1, 2):
        pq.write_table(_g1_table(i, i), data / f"episode_{i:06d}.parquet")
        shutil.copy(G1 / f"videos/chunk-000/observation.images.cam_high/episode_{i:06d}.mp4",
                    videos / f"episode_{i:06d}.mp4")
        listed.append({"episode_index": i, "tasks": task, "length": ROWS})
        corpus.good.append(f"episode_{i:06d}")
    for n, (kind, (table_edit, file_edit, fld, file)) in enumerate(LEROBOT_KINDS.items()):
        idx = 10 + n
        parquet, video = data / f"episode_{idx:06d}.parquet", videos / f"episode_{idx:06d}.mp4"
        pq.write_table(table_edit(_g1_table(idx)) if table_edit else _g1_table(idx), parquet)
        video.symlink_to("episode_000001.mp4")
        if file_edit:
            file_edit(parquet, video)
        listed.append({"episode_index": idx, "tasks": task, "length": ROWS})
        corpus.bad.append(Bad(kind, f"episode_{idx:06d}", fld, file))
    (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in listed))
    return corpus


# -- NYU Depth V2 (BTS layout, from the real mmseg pair) --------------------------------------------------------
def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


NYU_BAD = (Bad("depth_without_rgb", "train/unpaired/sync/depth_without_rgb/00001", "obs.rgb", "sync_depth_00001.png"),
           Bad("rgb_without_depth", "train/unpaired/sync/rgb_without_depth/00001", "obs.depth", "rgb_00001.jpg"),
           Bad("depth_png_8bit", "train/depth_8bit", "obs.depth", "sync_depth_00001.png"),
           Bad("depth_png_3_channels", "train/depth_3_channels", "obs.depth", "sync_depth_00001.png"),
           Bad("rgb_truncated", "train/rgb_truncated", "obs.rgb", "rgb_00001.jpg"),
           Bad("depth_truncated", "train/depth_truncated", "obs.depth", "sync_depth_00001.png"),
           Bad("depth_not_png", "train/depth_not_png", "obs.depth", "sync_depth_00001.png"),
           Bad("depth_other_size_than_rgb", "train/depth_other_size", "obs.depth", "sync_depth_00001.png"),
           Bad("pair_of_another_size", "train/pair_of_another_size", "obs.rgb", "rgb_00001.jpg"))


def nyu_corpus(dest: Path) -> Corpus:
    """A BTS-layout folder (`sync/<scene>/rgb_NNNNN.jpg` + `sync_depth_NNNNN.png`) of the real 160x120 pair:
    two good scenes, and one scene (or unpaired file) per damage."""
    rgb_bytes = NYU_PAIR.with_suffix(".jpg").read_bytes()
    depth = np.asarray(Image.open(NYU_PAIR.with_suffix(".png")))
    sync = dest / "sync"

    def scene(name: str, rgb: bytes | None = rgb_bytes, dep: np.ndarray | bytes | None = depth) -> Path:
        d = sync / name
        d.mkdir(parents=True)
        if rgb is not None:
            (d / "rgb_00001.jpg").write_bytes(rgb)
        if isinstance(dep, bytes):
            (d / "sync_depth_00001.png").write_bytes(dep)
        elif dep is not None:
            _png(d / "sync_depth_00001.png", dep)
        return d

    scene("good_a")
    scene("good_b")
    scene("depth_without_rgb", rgb=None)
    scene("rgb_without_depth", dep=None)
    scene("depth_8bit", dep=np.round(depth / 10000 * 255).astype(np.uint8))
    scene("depth_3_channels", dep=np.repeat((depth // 40).astype(np.uint8)[..., None], 3, axis=2))
    scene("rgb_truncated", rgb=rgb_bytes[:600])
    png = io.BytesIO()
    Image.fromarray(depth).save(png, format="PNG")
    scene("depth_truncated", dep=png.getvalue()[:500])
    scene("depth_not_png", dep=b"not a png at all\n" * 10)
    scene("depth_other_size", dep=depth[::2, ::2].copy())
    small = io.BytesIO()
    Image.open(NYU_PAIR.with_suffix(".jpg")).resize((80, 60)).save(small, format="JPEG")
    scene("pair_of_another_size", rgb=small.getvalue(), dep=depth[::2, ::2].copy())
    return Corpus("nyu", dest, ["--val-fraction", "0"], ["train/good_a", "train/good_b"], list(NYU_BAD))


# -- WebVid metadata CSV ---------------------------------------------------------------------------------------
WEBVID_BAD = (Bad("duplicate_row_second_copy", "000000003", "contentUrl", "meta.csv"),
              Bad("duplicate_row_third_copy", "000000004", "contentUrl", "meta.csv"),
              Bad("unclosed_quote", "000000005", "name", "meta.csv"),
              Bad("too_many_fields", "000000006", "contentUrl", "meta.csv"),
              Bad("too_few_fields", "000000007", "page_dir", "meta.csv"),
              Bad("empty_url", "000000008", "contentUrl", "meta.csv"),
              Bad("not_utf8", "000000009", "name", "meta.csv"))


def webvid_corpus(dest: Path, base_url: str) -> Corpus:
    """A CSV in the 2.5M column order made of the real rows (captions without commas, so each row is one plain
    line), every URL served from `base_url` (the small clip): good rows, a caption over the csv module's 128 KiB
    field limit (stored), and one damaged row (or group of rows) per kind. Keys are `row_key(record index)`;
    the row an unclosed quote swallows is recovered as `<key>_1`."""
    with open(WEBVID_CSV, newline="") as f:
        rows = list(csv.reader(f))
    header, real = rows[0], rows[1:]

    def fields(i: int, **cols) -> list[str]:
        r = [v.replace(",", "").replace('"', "") for v in real[i % len(real)]]
        r[header.index("contentUrl")] = f"{base_url}/clip.mp4?row={i}"
        for k, v in cols.items():
            r[header.index(k)] = v
        return r

    def line(i: int, **cols) -> bytes:
        return (",".join(fields(i, **cols)) + "\n").encode()

    quoted = io.StringIO()
    csv.writer(quoted, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(fields(6))
    unclosed = fields(5)
    unclosed[header.index("name")] = '"an unclosed quote in ' + unclosed[header.index("name")]
    not_utf8 = fields(10)
    data = b"".join([
        (",".join(header) + "\n").encode(), line(0), line(1, name="x" * (200 << 10)),  # records 0, 1
        line(2), line(2), line(2),                                                      # records 2, 3, 4
        (",".join(unclosed) + "\n").encode(), quoted.getvalue().encode(),              # record 5 (+ 5_1)
        line(7)[:-1] + b",one too many\n",                                             # record 6
        (",".join(fields(8)[:3]) + "\n").encode(),                                     # record 7
        line(9, contentUrl=""),                                                         # record 8
        ",".join(not_utf8).encode().replace(not_utf8[1][:4].encode(), b"\xff\xfe" + not_utf8[1][:2].encode(), 1)
        + b"\n",                                                                       # record 9
        line(11)])                                                                      # record 10
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "meta.csv"
    path.write_bytes(data)
    good = ["000000000", "000000001", "000000002", "000000005_1", "000000010"]
    return Corpus("webvid", path, ["--allow-private-urls", "--samples-per-shard", "4"], good, list(WEBVID_BAD))


# Kinds of damage per source, as the corpus builders above write them (`tests/test_bad_inputs.py` checks each).
KINDS = {"yam": [*YAM_KINDS], "libero": [*ROBOSUITE_KINDS] + [b.kind for b in LIBERO_LAYOUT_BAD],
         "lerobot": [*LEROBOT_KINDS], "nyu": [b.kind for b in NYU_BAD], "webvid": [b.kind for b in WEBVID_BAD]}
