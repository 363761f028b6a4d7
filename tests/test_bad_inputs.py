"""The bad-input corpus (issue 21; `tests/bad_inputs.py`): for every kind of damage, across YAM, LIBERO /
robomimic / robosuite, LeRobot, NYU and WebVid, one ingest per source through the real CLI gives no traceback,
a report row naming the episode, the file and the field, every good episode stored, and exit status 2. Plus
the named refusals (a job that cannot be done at all), and schemas that are never padded (mixed robots)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from bad_inputs import (
    KINDS,
    LEROBOT_KINDS,
    ROBOSUITE,
    ROBOSUITE_KINDS,
    WEBVID_CLIP,
    YAM_KINDS,
    Corpus,
    lerobot_corpus,
    libero_layout_corpus,
    nyu_corpus,
    robosuite_corpus,
    webvid_corpus,
    yam_corpus,
)
from conftest import run_cli, serve_directory
from libero_fixtures import write_libero_file

from shardyard import open_store


def _ingest(corpus: Corpus, out: Path, *extra: str):
    """The CLI ingest of a corpus; checks what every source owes: exit 2, no traceback, the summary."""
    proc = run_cli("ingest", corpus.source, corpus.root, "--out", out, *corpus.args, *extra)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    return proc


def _check_rows(corpus: Corpus, rows: dict[str, dict]) -> None:
    """Each bad kind has its row: the episode key, a path ending in the file, the field among the row's."""
    missing = [b.kind for b in corpus.bad if b.key not in rows]
    assert not missing, (missing, sorted(rows))
    for b in corpus.bad:
        row = rows[b.key]
        assert b.field in (row.get("field") or "").split(","), (b.kind, row)
        assert row.get("path") and b.file in Path(row["path"]).name, (b.kind, row)
        assert row.get("reason") or row.get("error_message"), (b.kind, row)
    assert {b.kind for b in corpus.bad} <= set(KINDS[corpus.source])  # what the tally counts is checked here


def _episodic(corpus: Corpus, out: Path) -> None:
    """An episodic ingest: the good keys stored (and nothing else), one skipped row per bad kind."""
    proc = _ingest(corpus, out)
    store = open_store(str(out))
    assert store.episode_keys == sorted(corpus.good) or sorted(store.episode_keys) == sorted(corpus.good), \
        store.episode_keys
    rows = {r["key"]: r for r in store.report["skipped"]}
    assert len(rows) == len(corpus.bad) and f"{len(corpus.bad)} skipped" in proc.stdout, sorted(rows)
    _check_rows(corpus, rows)


def test_yam(tmp_path):
    corpus = yam_corpus(tmp_path / "raw")
    assert len(corpus.bad) == len(YAM_KINDS) >= 20
    _episodic(corpus, tmp_path / "store")
    rows = {r["key"]: r for r in open_store(str(tmp_path / "store")).report["skipped"]}
    fk = rows["damaged/joint_pos_5_columns"]  # the case: a named row, not MuJoCo's ValueError
    assert fk["error"] == "SourceError" and "5 joint columns" in fk["reason"] and "has 6" in fk["reason"]
    assert "7" in rows["damaged/control_hz_contradicts_timestamps"]["reason"]


def test_robosuite(tmp_path):
    corpus = robosuite_corpus(tmp_path / "raw")
    assert len(corpus.bad) == len(ROBOSUITE_KINDS)
    _episodic(corpus, tmp_path / "store")
    rows = {r["key"]: r for r in open_store(str(tmp_path / "store")).report["skipped"]}
    assert "|S8" in rows["states_byte_strings/demo_1"]["reason"]  # the case, named by dtype
    assert rows["not_hdf5/data"]["error"] == "SourceError" and "cannot open HDF5" in rows["not_hdf5/data"]["reason"]
    assert "(6,)" in rows["actions_6_wide/demo_1"]["reason"] and "(7,)" in rows["actions_6_wide/demo_1"]["reason"]


def test_libero_layout(tmp_path):
    corpus = libero_layout_corpus(tmp_path / "raw", write_libero_file)
    _episodic(corpus, tmp_path / "store")


def test_lerobot(tmp_path):
    corpus = lerobot_corpus(tmp_path / "ds")
    assert len(corpus.bad) == len(LEROBOT_KINDS)
    _episodic(corpus, tmp_path / "store")
    store = open_store(str(tmp_path / "store"))
    rows = {r["key"]: r for r in store.report["skipped"]}
    shape = rows[corpus.bad[0].key]  # state_25_values: the shape disagreement, named
    assert "25 value(s) per row" in shape["reason"] and "[26]" in shape["reason"]
    fps = next(rows[b.key] for b in corpus.bad if b.kind == "timestamps_at_7_fps")
    assert "fps 30" in fps["reason"] and "7.000 Hz" in fps["reason"]
    assert store.schema["obs.rgb.cam_high"].shape == (480, 640, 3)  # the camera stays, good episodes have it


def test_nyu(tmp_path):
    corpus = nyu_corpus(tmp_path / "raw")
    _episodic(corpus, tmp_path / "store")
    rows = {r["key"]: r for r in open_store(str(tmp_path / "store")).report["skipped"]}
    assert "8-bit depth png" in rows["train/depth_8bit"]["reason"]  # refused, never scaled as 255 = 10 m


def test_webvid(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(WEBVID_CLIP, served / "clip.mp4")
    server, base = serve_directory(served)
    try:
        corpus = webvid_corpus(tmp_path / "meta", base)
        proc = _ingest(corpus, tmp_path / "shards")
    finally:
        server.shutdown()
    report = json.loads((tmp_path / "shards" / "report.json").read_text())
    by_key = {r["key"]: r for r in report["samples"]}
    assert sorted(k for k, r in by_key.items() if r["status"] == "success") == sorted(corpus.good), by_key
    rows = {k: r | {"reason": r.get("error_message")} for k, r in by_key.items() if r["status"] != "success"}
    assert len(rows) == len(corpus.bad) and report["num_failed"] == len(corpus.bad)
    _check_rows(corpus, rows)
    assert {rows["000000003"]["status"], rows["000000004"]["status"]} == {"duplicate"}
    assert "line 4" in rows["000000004"]["error_message"] and rows["000000009"]["line"] == 12
    assert f"{len(corpus.good)} of {len(by_key)} sample(s) ok" in proc.stdout
    # the stored samples: the long caption whole, the recovered row, each duplicate once
    import tarfile

    captions = {}
    for tar in sorted((tmp_path / "shards" / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            captions |= {m.name[:-4]: t.extractfile(m).read().decode() for m in t if m.name.endswith(".txt")}
    assert sorted(captions) == sorted(corpus.good) and len(captions["000000001"]) == 200 << 10


def test_corpus_covers_forty_kinds_across_five_sources():
    """The tally of kinds (printed with -s); each source's test above checks every kind of its corpus."""
    tally = {source: len(kinds) for source, kinds in KINDS.items()}
    print(f"bad-input kinds: {tally} = {sum(tally.values())}")
    assert sum(tally.values()) >= 40 and min(tally.values()) >= 5
    assert all(len(set(kinds)) == len(kinds) for kinds in KINDS.values())


# -- named refusals: the whole job cannot be done ---------------------------------------------------------------

def test_refusals_are_named_without_traceback(tmp_path, shared_data):
    nyu = tmp_path / "plain"
    nyu.mkdir()
    shutil.copy(shared_data / "nyu_depth_v2" / "mmseg_bts_style" / "bookstore_0001d_00001.jpg", nyu / "rgb.jpg")
    shutil.copy(shared_data / "nyu_depth_v2" / "mmseg_bts_style" / "bookstore_0001d_00001.png", nyu / "depth.png")
    so101 = tmp_path / "so101"
    shutil.copytree(shared_data / "lerobot" / "so101_record_test_v3.0", so101)
    info = json.loads((so101 / "meta" / "info.json").read_text())
    (so101 / "meta" / "info.json").write_text(json.dumps(info | {"fps": 7}))
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "meta").mkdir()
    (tmp_path / "garbled" / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1"}))
    cases = [
        (("nyu", nyu), ["sync_depth_<NNNNN>.png", "<scene>_<NNNNN>.png", "nyu_depth_v2_labeled.mat"]),
        (("lerobot", so101), ["no video file for any episode of camera(s) ['front', 'top']", "--camera none"]),
        (("lerobot", tmp_path / "garbled"), ["malformed LeRobot meta", "KeyError"]),
        (("libero", tmp_path / "nothing.hdf5"), ["not found"]),
    ]
    for (source, path), words in cases:
        proc = run_cli("ingest", source, path, "--out", tmp_path / f"out_{source}")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        for w in words:
            assert w in proc.stderr, (w, proc.stderr)
    # fps 7 in info.json over timestamps 1/30 s apart: every episode a row naming info.json and `fps`
    proc = run_cli("ingest", "lerobot", so101, "--out", tmp_path / "fps7", "--camera", "none")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    rows = open_store(str(tmp_path / "fps7")).report["skipped"]
    assert len(rows) == 4 and all(r["field"] == "fps" and r["path"].endswith("info.json") for r in rows)


def test_on_error_fail_stops_at_the_first_unforeseen_failure(tmp_path):
    """`--on-error fail`: the first bad episode (here MuJoCo-level damage) stops the job, named, exit 1."""
    corpus = yam_corpus(tmp_path / "raw")
    proc = run_cli("ingest", "yam", corpus.root, "--out", tmp_path / "s", *corpus.args, "--on-error", "fail")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "damaged/" in proc.stderr and "episode=" in proc.stderr


# -- schemas are never padded (mixed robots) ---------------------------------------------------------------------

def test_mixed_robots_are_refused_or_grouped_never_padded(tmp_path):
    """Five robosuite files of three robots and four scenes: by default the first demo's fields make the
    store and the others are rows naming `sim_state`/`action`; a field some demos lack is absent (not zeros
    in the stats, padding in the loader); `--group-by-schema` gives one exact store per schema."""
    from shardyard.loaders.episodes import EpisodeDataset

    raw = tmp_path / "raw"
    raw.mkdir()
    names = ["RoboticsSuite_Test", "robosuite_SawyerLift", "robosuite_BaxterLift", "robosuite_lift_panda",
             "robosuite_door_panda"]
    for n in names:
        shutil.copy(ROBOSUITE / f"{n}.hdf5", raw / f"{n}.hdf5")
    proc = run_cli("ingest", "libero", raw, "--out", tmp_path / "one", "--val-fraction", "0")
    assert proc.returncode == 2, proc.stderr
    one = open_store(str(tmp_path / "one"))
    assert one.episode_keys == ["RoboticsSuite_Test/demo_1", "robosuite_SawyerLift/demo_1",
                                "robosuite_SawyerLift/demo_2"]
    assert one.schema["sim_state"].shape == (34,) and one.schema["action"].shape == (8,)
    rows = {r["key"]: r for r in one.report["skipped"]}
    assert rows["robosuite_BaxterLift/demo_1"]["field"] == "sim_state"
    assert rows["robosuite_lift_panda/demo_1"]["field"] == "action,sim_state"
    door = rows["robosuite_door_panda/demo_1"]["reason"]
    assert "(7,)" in door and "(23,)" in door
    # SawyerLift (2018) recorded no `actions`: absent, never an all-zero action
    for i in (1, 2):
        assert one.episode_meta(i)["absent_fields"] == ["action", "raw.starts"]
    test_steps = one.episode_length(0)
    assert one.stats["fields"]["action"]["count"] == [test_steps] and one.stats["fields"]["sim_state"]["count"] == \
        [one.num_steps]
    with __import__("h5py").File(ROBOSUITE / "RoboticsSuite_Test.hdf5") as h:
        actions = h["data/demo_1/actions"][()]
    np.testing.assert_allclose(one.stats["fields"]["action"]["std"], actions.std(0), rtol=1e-4)
    ds = EpisodeDataset(one, {"action": [0], "sim_state": [0]})
    batch = ds.fetch(np.arange(len(ds)))
    assert (batch["action_is_pad"][:, 0] == (batch["episode_index"] > 0)).all()
    assert not batch["sim_state_is_pad"].any()

    proc = run_cli("ingest", "libero", raw, "--out", tmp_path / "grouped", "--group-by-schema")
    assert proc.returncode == 0, proc.stderr
    groups = json.loads((tmp_path / "grouped" / "groups.json").read_text())
    assert len(groups) == 5 and {g["robot"] for g in groups.values()} == {"Sawyer", "Baxter", "Panda"}
    for name, g in groups.items():
        assert name.startswith(f"{g['robot']}-") and name.endswith(g["schema_hash"])
        s = open_store(str(tmp_path / "grouped" / name))
        assert s.episode_keys == g["keys"] and not any("absent_fields" in s.episode_meta(i)
                                                       for i in range(s.num_episodes))
    # a rerun resumes every store (nothing rewritten); --out must not be a store
    again = run_cli("ingest", "libero", raw, "--out", tmp_path / "grouped", "--group-by-schema")
    assert again.returncode == 0 and "0 episode(s) written" in again.stdout
    refused = run_cli("ingest", "libero", raw, "--out", tmp_path / "one", "--group-by-schema")
    assert refused.returncode == 1 and "--group-by-schema needs a folder" in refused.stderr

