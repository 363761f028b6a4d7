"""`ingest webvid`: CSV/parquet metadata against a fault-injecting loopback server, resume, --retry-failed,
transcoding, and verification of the real video2dataset shard (whose some `.mp4` members are JPEGs)."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from faultserver import FaultServer

from shardyard.errors import SourceError
from shardyard.ingest.fetch import FetchConfig, Fetcher
from shardyard.ingest.webvid import (
    TranscodeConfig,
    WebvidConfig,
    ingest_webvid,
    parse_iso_duration,
    probe_video,
    read_meta,
    transcode,
)
from shardyard.stores.wds import ShardStore

CLIPS = ["mmaction2_rawvideo_part_0.mp4", "mmaction2_demo.mp4", "mmaction2_test_video_structuralize.mp4"]
CSV_NAME = "webvid_2M_val_style_rows01-13.csv"

# Row i of the real CSV is served at /v/<i>.mp4 with this behaviour plan (default: the part_0 clip, "ok").
PLAN = {1: ["500", "ok"], 2: ["429", "ok"], 3: ["truncate", "ok"], 4: ["stall", "ok"], 5: ["404"],
        6: ["stall"], 7: ["500"] * 3 + ["ok"]}
EXPECTED_FAIL = {5: "dead_link", 6: "timeout", 7: "http_error", 8: "not_video", 9: "undecodable"}


def _files(shared: Path, n: int) -> dict[str, bytes]:
    clips = [(shared / "webvid" / "clips" / c).read_bytes() for c in CLIPS]
    with tarfile.open(shared / "webvid" / "video2dataset_shard" / "return_all_test.tar") as t:
        jpeg = t.extractfile("000000014.mp4").read()
    files = {f"/v/{i}.mp4": clips[0] if i % 4 else clips[i % 3] for i in range(n)}
    files["/v/5.mp4"] = clips[0]  # exists, but the plan answers 404
    files["/v/8.mp4"] = jpeg
    files["/v/9.mp4"] = clips[1][: len(clips[1]) // 3]  # a truncated mp4, served whole
    return files


def _csv(shared: Path, tmp: Path, base: str, order: str = "2.5M") -> Path:
    with open(shared / "webvid" / CSV_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["contentUrl"] = f"{base}/v/{i}.mp4"
    cols = list(rows[0]) if order == "2.5M" else ["videoid", "contentUrl", "duration", "page_dir", "name"]
    out = tmp / f"meta_{order}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def test_iso_durations_and_both_column_orders(shared_data, tmp_path):
    assert parse_iso_duration("PT00H00M17S") == 17.0
    assert parse_iso_duration("PT1H2M3.5S") == 3723.5
    assert parse_iso_duration("17 s") is None
    rows25 = read_meta(_csv(shared_data, tmp_path, "http://x"))
    rows10 = read_meta(_csv(shared_data, tmp_path, "http://x", "10M"))
    assert len(rows25) == len(rows10) == 13
    assert list(rows10[0]) == ["videoid", "contentUrl", "duration", "page_dir", "name"]
    assert [r["contentUrl"] for r in rows25] == [r["contentUrl"] for r in rows10]
    assert rows25[0]["name"].startswith("Travel blogger")
    pq.write_table(pa.Table.from_pylist(rows10), tmp_path / "meta.parquet")
    assert read_meta(tmp_path / "meta.parquet") == rows10


def test_fetch_retries_and_dead_links(shared_data):
    files = {"/a.mp4": b"x" * 5000, "/b.mp4": b"y" * 5000, "/c.mp4": b"z" * 5000}
    plan = {"/a.mp4": ["500", "429", "ok"], "/b.mp4": ["404"], "/d.mp4": ["403"]}
    with FaultServer(files, plan, nth_500=0) as srv, Fetcher(FetchConfig(
            timeout_s=1, retries=3, backoff_s=0.01, allow_private_urls=True)) as f:
        a, b, c = (f.fetch(f"{srv.url}{p}") for p in ("/a.mp4", "/b.mp4", "/c.mp4"))
        assert (a.status, a.attempts, a.retries_429, a.data) == ("success", 3, 1, files["/a.mp4"])
        assert (b.status, b.attempts, b.http_status) == ("dead_link", 1, 404)  # never retried
        assert c.status == "success" and c.attempts == 1
        assert srv.requests_for("/b.mp4") == 1


def test_csv_ingest_under_faults_resume_and_retry_failed(shared_data, tmp_path):
    n = 13
    plan = {f"/v/{k}.mp4": v for k, v in PLAN.items()}
    with FaultServer(_files(shared_data, n), plan, stall_s=2.0, max_requests=200, max_seconds=60) as srv:
        meta = _csv(shared_data, tmp_path, srv.url)
        out = tmp_path / "store"
        args = ["ingest", "webvid", meta, "--out", out, "--samples-per-shard", "5", "--timeout", "0.5",
                "--retries", "2", "--backoff", "0.05", "--concurrency", "4", "--allow-private-urls"]
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 2, proc.stderr
        report = json.loads((out / "report.json").read_text())
        status = {int(r["key"]): r["status"] for r in report["samples"]}
        assert status == {i: EXPECTED_FAIL.get(i, "success") for i in range(n)}
        assert report["num_success"] == n - len(EXPECTED_FAIL)
        assert report["success_rate"] == pytest.approx((n - 5) / n, abs=1e-4)
        store = ShardStore(str(out))
        assert store.verify() == [] and [f["samples"] for f in store.manifest.files] == [5, 0, 3]
        keys = []
        for shard in store.shards():
            with tarfile.open(shard) as t:
                names = t.getnames()
                keys += sorted({m.split(".")[0] for m in names})
                for m in names:
                    if m.endswith(".json"):
                        j = json.loads(t.extractfile(m).read())
                        assert j["status"] == "success" and j["num_frames"] > 0 and j["fps"] > 0
                        assert j["duration"].startswith("PT") and j["videoid"] and j["width"] == 340
                        assert j["container"] == "mp4" and f"{j['key']}.mp4" in names
        assert keys == [f"{i:09d}" for i in range(n) if i not in EXPECTED_FAIL]  # each reachable sample once
        assert srv.requests_for("/v/5.mp4") == 1  # 404: no retry
        assert srv.requests_for("/v/7.mp4") == 3  # 5xx: 1 + 2 retries
        # rerun: every shard is finished, nothing is fetched
        before = len(srv.log)
        assert run_cli(*args, timeout=60).returncode == 2
        assert len(srv.log) == before
        # --retry-failed: only the failed rows are requested; /v/7 now answers
        assert run_cli(*args, "--retry-failed", timeout=120).returncode == 2
        refetched = {p for p, _ in srv.log[before:]}
        assert refetched == {f"/v/{i}.mp4" for i in EXPECTED_FAIL}
        report = json.loads((out / "report.json").read_text())
        assert {int(r["key"]): r["status"] for r in report["samples"]}[7] == "success"
        assert ShardStore(str(out)).num_samples == n - len(EXPECTED_FAIL) + 1
        assert ShardStore(str(out)).verify() == []


def test_transcode_resize_fps_max_seconds(shared_data):
    data = (shared_data / "webvid" / "clips" / "mmaction2_demo.mp4").read_bytes()  # 340x256, 28 fps, 10 s
    out = transcode(data, TranscodeConfig(short_side=64, fps=10, max_seconds=2))
    p = probe_video(out)
    assert p["status"] == "success"
    assert (p["height"], p["width"], p["num_frames"]) == (64, 84, 20) and p["fps"] == pytest.approx(10)


def test_ingest_with_transcode_writes_video2dataset_style_json(shared_data, tmp_path):
    files = {f"/v/{i}.mp4": (shared_data / "webvid" / "clips" / c).read_bytes() for i, c in enumerate(CLIPS)}
    with FaultServer(files, nth_500=0, max_requests=20, max_seconds=30) as srv:
        meta = _csv(shared_data, tmp_path, srv.url)
        lines = meta.read_text().splitlines()
        meta.write_text("\n".join(lines[:4]) + "\n")
        cfg = WebvidConfig(out=tmp_path / "t", transcode=TranscodeConfig(short_side=64, fps=8, max_seconds=1),
                           fetch=FetchConfig(timeout_s=5, retries=0, concurrency=2, allow_private_urls=True))
        result = ingest_webvid(meta, cfg)
    assert result.exit_code == 0 and result.report["success_rate"] == 1.0
    with tarfile.open(tmp_path / "t" / "shards" / "train-000000.tar") as t:
        assert t.getnames()[:3] == ["000000000.json", "000000000.mp4", "000000000.txt"]
        for k in ("000000000", "000000001", "000000002"):
            j = json.loads(t.extractfile(f"{k}.json").read())
            assert (j["height"], j["num_frames"], j["status"], j["error_message"]) == (64, 8, "success", None)
            assert j["fps"] == pytest.approx(8) and j["caption"] == t.extractfile(f"{k}.txt").read().decode()
            assert j["url"] == j["contentUrl"] and j["duration"].startswith("PT") and j["bytes"] > 0


def test_video2dataset_shard_verified_by_cli(shared_data, tmp_path):
    out = tmp_path / "w"
    proc = run_cli("ingest", "webvid", shared_data / "webvid" / "video2dataset_shard", "--out", out)
    assert proc.returncode == 2, proc.stderr  # some samples are not videos: reported, not fatal
    assert "not_video: 3" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    by_key = {r["key"]: r for r in report["samples"]}
    assert report["by_status"] == {"not_video": 3, "success": 3}
    for k in ("000000014", "000000025", "000000356"):
        assert by_key[k]["status"] == "not_video" and "JPEG" in by_key[k]["error_message"]
    assert by_key["0000030_00005"]["num_frames"] == 150 and by_key["0000030_00005"]["fps"] == 30.0
    store = ShardStore(str(out))
    assert store.manifest.files[0]["samples"] == 6 and store.verify() == []


def test_hugging_face_dataset_metadata(shared_data, tmp_path):
    """META as a Hugging Face dataset: a `save_to_disk` folder and a local folder of parquet files (streamed)."""
    datasets = pytest.importorskip("datasets")
    rows = read_meta(_csv(shared_data, tmp_path, "http://x", "10M"))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    assert read_meta(saved) == rows
    folder = tmp_path / "parquet_folder"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000.parquet")
    assert read_meta(folder) == rows
    with pytest.raises(SourceError):
        read_meta(tmp_path / "empty_dir_that_is_no_dataset")
