"""Training straight from a URL list (issue 24): `UrlClipStream` against a fault-injecting loopback server.
Every fault is counted under its reason and never yielded; a stream stopped and resumed (through a 2-worker
DataLoader) yields exactly the rest of an uninterrupted run; ranks and workers read disjoint rows covering
the input; `--cache` then `ingest webvid --retry-failed` gives the store a direct ingest gives; the metadata
is read by blocks with the values `ingest webvid` reads; the trainer logs the counts, stops when the server
goes dark, resumes bit-identically, and refuses loopback URLs unless allowed."""

from __future__ import annotations

import csv
import dataclasses
import json
import pickle
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from clipfactory import CLIPS, encode_clip, reference_frames
from conftest import run_cli
from faultserver import FaultServer
from torch.utils.data import DataLoader

from shardyard.errors import SourceError
from shardyard.ingest.fetch import FetchConfig
from shardyard.ingest.webvid import WebvidConfig, ingest_webvid, read_meta
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.loaders.url_meta import MetaRows
from shardyard.loaders.url_prefetch import Prefetcher, RowOutcome, in_order
from shardyard.loaders.url_stream import UrlClipStream, UrlStreamConfig
from shardyard.stores.wds import ShardStore
from shardyard.train.foveated_caption import FoveatedTrainConfig, train
from shardyard.train.loop import read_metrics

T = 8
FETCH = FetchConfig(timeout_s=0.5, retries=1, backoff_s=0.01, allow_private_urls=True)
# row -> (container of its URL, plan); the bodies of rows 3-5 are set in `bodies`
FAULT_ROWS = {0: ("mp4", ["ok"]), 1: ("mkv", ["500", "ok"]), 2: ("mp4", ["404"]), 3: ("mp4", ["ok"]),
              4: ("mp4", ["ok"]), 5: ("mp4", ["ok"]), 6: ("mp4", ["stall"]), 7: ("mp4", ["truncate"]),
              8: ("mp4", ["500"]), 9: ("mp4", ["ok"]), 10: ("avi", ["ok"]), 11: ("webm", ["ok"])}
EXPECTED = {2: "dead_link", 3: "not_video", 4: "undecodable", 5: "too_short", 6: "timeout", 7: "network_error",
            8: "http_error", 9: "no_url"}


@pytest.fixture(scope="module")
def bodies(shared_data) -> dict[str, bytes]:
    """Tiny real clips per container, a JPEG (a video2dataset member), a cut mp4 and a 6-frame clip."""
    out = {ext: encode_clip(CLIPS[name], seed=i)[0] for i, (ext, name) in enumerate(
        [("mp4", "mp4_h264_bframes"), ("mkv", "mkv_h264_bframes"), ("avi", "avi_mpeg4_bframes"),
         ("webm", "webm_vp8")])}
    with tarfile.open(shared_data / "webvid" / "video2dataset_shard" / "return_all_test.tar") as t:
        out["jpeg"] = t.extractfile("000000014.mp4").read()
    out["cut"] = out["mp4"][: len(out["mp4"]) // 3]
    out["short"] = encode_clip(dataclasses.replace(CLIPS["mp4_h264_bframes"], num_frames=6))[0]
    return out


@pytest.fixture(scope="module")
def server(bodies):
    """One loopback server for the module; each test serves its own paths (`/<prefix>/<row>.<ext>`)."""
    with FaultServer({}, nth_500=0, stall_s=1.0, max_requests=100_000, max_seconds=600) as srv:
        yield srv


def _meta(tmp: Path, srv: FaultServer, prefix: str, bodies: dict[str, bytes], n: int,
          special: dict[int, tuple[str, list[str], bytes]] | None = None, no_url: tuple[int, ...] = ()) -> Path:
    """A 10M-order WebVid CSV of `n` rows served at /prefix/<i>.<ext>; row i's body cycles through the clips
    unless `special[i] = (ext, plan, body)`."""
    exts = ["mp4", "mkv", "avi", "webm"]
    rows = []
    for i in range(n):
        ext, plan, body = (special or {}).get(i, (exts[i % 4], ["ok"], bodies[exts[i % 4]]))
        path = f"/{prefix}/{i}.{ext}"
        srv.files[path], srv.plan[path] = body, plan
        rows.append({"videoid": str(1000 + i), "contentUrl": "" if i in no_url else f"{srv.url}{path}",
                     "duration": "PT00H00M02S", "page_dir": "p", "name": f"caption, \"{i}\"\nsecond line"})
    meta = tmp / f"{prefix}.csv"
    with open(meta, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return meta


def _fault_special(bodies) -> dict[int, tuple[str, list[str], bytes]]:
    body = {3: bodies["jpeg"], 4: bodies["cut"], 5: bodies["short"]}
    return {i: (ext, plan, body.get(i, bodies[ext])) for i, (ext, plan) in FAULT_ROWS.items()}


def _cfg(**kw) -> UrlStreamConfig:
    return UrlStreamConfig(**{"num_frames": T, "clip_start": "start", "block_rows": 4, "in_flight": 3,
                              "fetch": FETCH, **kw})


def test_every_fault_counted_under_its_reason_and_never_yielded(tmp_path, server, bodies):
    meta = _meta(tmp_path, server, "f", bodies, 12, _fault_special(bodies), no_url=(9,))
    stream = ClipStream.from_urls(meta, config=_cfg())
    items = list(stream)
    assert sorted(int(i["key"]) for i in items) == [0, 1, 10, 11]
    for it in items:                                            # frame i is the i-th decoded frame, every container
        ext = FAULT_ROWS[int(it["key"])][0]
        ref = torch.from_numpy(reference_frames(bodies[ext])[:T]).permute(0, 3, 1, 2)
        assert it["frames"].dtype == torch.uint8 and torch.equal(it["frames"], ref), ext
        assert it["caption"] == f"caption, \"{int(it['key'])}\"\nsecond line"
    c = stream.counters
    want = {r: sum(1 for v in EXPECTED.values() if v == r) for r in c["failed"]}
    assert c["failed"] == want and (c["rows"], c["ok"]) == (12, 4)
    assert {int(r): why for why, rows in stream.state_dict()["failed"].items() for r in rows} == EXPECTED
    assert server.requests_for("/f/2.mp4") == 1                # a dead link is never retried
    assert server.requests_for("/f/8.mp4") == 2                # a 5xx is (retries=1)
    # the next epoch downloads none of the recorded failures, and yields the same rows
    before = len(server.log)
    stream.set_epoch(1)
    assert sorted(int(i["key"]) for i in stream) == [0, 1, 10, 11]
    assert {p for p, _ in server.log[before:]} == {f"/f/{i}.{FAULT_ROWS[i][0]}" for i in (0, 1, 10, 11)}
    assert stream.counters["skipped_known"] == len(EXPECTED)
    # unless asked
    again = ClipStream.from_urls(meta, config=_cfg(retry_failed=True))
    again.load_state_dict(json.loads(json.dumps(stream.state_dict())))
    again.set_epoch(2)                                          # the state ends epoch 1: a new epoch
    before = len(server.log)
    assert sorted(int(i["key"]) for i in again) == [0, 1, 10, 11]
    assert {f"/f/{i}.mp4" for i in (2, 3, 4, 5, 6, 7, 8)} <= {p for p, _ in server.log[before:]}


def _by_worker(items: list[dict]) -> dict[int, list[tuple[str, torch.Tensor]]]:
    out: dict[int, list] = {}
    for it in items:
        out.setdefault(it["worker"], []).append((it["key"], it["frames"]))
    return out


def _unbatch(batches: list[dict]) -> list[dict]:
    return [{"key": k, "worker": int(w), "frames": f} for b in batches
            for k, w, f in zip(b["key"], b["worker"], b["frames"])]


def test_a_stalled_download_starts_fetch_ahead_rows_early_while_few_clips_are_decoded(tmp_path, server, bodies):
    """Downloads lead the consumer by `fetch_ahead` rows and decodes by `ahead`: the request for a stalled
    row 30 is made while the consumer holds its first clip (with `ahead` 2 alone it waited for row ~27), and
    at most `ahead` + 1 rows are decoded or decoding beyond the one yielded."""
    meta = _meta(tmp_path, server, "lead", bodies, 40, special={30: ("mp4", ["stall"], bodies["mp4"])})
    decoded: list[str] = []
    stream = UrlClipStream(meta, _cfg(shuffle=False, ahead=2, in_flight=3, fetch_ahead=32, block_rows=8))
    decode = stream._decode
    stream._decode = lambda out: (decoded.append(out.key), decode(out))
    it = iter(stream)
    first = next(it)
    assert first["position"] == 0
    deadline = time.monotonic() + 30
    while server.requests_for("/lead/30.mp4") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.requests_for("/lead/30.mp4") >= 1
    assert len(decoded) <= 2 + 2  # the yielded row and max(ahead, in_flight) = 3 rows behind it
    it.close()


def test_in_order_generates_fetch_ahead_rows_while_their_bodies_fit_and_ahead_rows_when_not() -> None:
    """`in_order`'s two windows, deterministically: rows generated (downloads started) and decodes asked for
    by the time the first row is yielded, with room for the bodies and without."""
    for room, generated_by_first in ((True, 11), (False, 3)):
        made: list[int] = []
        asked: list[int] = []

        def tasks():
            for i in range(50):
                made.append(i)
                yield i

        def decoded(t: int) -> RowOutcome:
            asked.append(t)
            return RowOutcome(key=str(t))

        out = in_order(tasks(), 2, 10, decoded, room=lambda r=room: r)
        assert next(out)[0] == 0
        assert len(made) == generated_by_first and asked == [0, 1, 2]
        assert [t for t, _ in out] == list(range(1, 50)) and asked == list(range(50))


def test_prefetcher_counts_bodies_until_they_are_decoded() -> None:
    seen: list[int] = []
    pre = Prefetcher(2, lambda out: seen.append(pre.held_bytes))
    try:
        fetched = [pre.fetch(RowOutcome(key="a", data=b"x" * 100)),
                   pre.fetch(lambda: RowOutcome(key="b", data=b"y" * 50))]
        assert fetched[1].result().held == 50 and pre.held_bytes == 150
        for f in fetched:
            pre.decode(f).result()
        assert pre.held_bytes == 0 and seen[0] == 150 and seen[1] == 50
    finally:
        pre.close()


def test_stopped_and_resumed_stream_yields_exactly_the_rest(tmp_path, server, bodies):
    special = {5: ("mp4", ["404"], bodies["mp4"]), 9: ("mp4", ["ok"], bodies["jpeg"])}
    meta = _meta(tmp_path, server, "r", bodies, 22, special)
    cfg = _cfg(block_rows=3, clip_start="random", size=(32, 24), seed=7)
    full = _by_worker(_unbatch(list(DataLoader(UrlClipStream(meta, cfg), batch_size=2, num_workers=2))))
    first = UrlClipStream(meta, cfg)
    it, taken = iter(DataLoader(first, batch_size=2, num_workers=2)), []
    for _ in range(3):
        taken.append(next(it))
        first.record(taken[-1])
    state = json.loads(json.dumps(first.state_dict()))
    del it                                                      # the workers go, with what they prefetched
    rest = UrlClipStream(meta, dataclasses.replace(cfg, seed=0))  # the seed comes from the state
    rest.load_state_dict(state)
    resumed = _by_worker(_unbatch(taken) + _unbatch(list(DataLoader(rest, batch_size=2, num_workers=2))))
    assert full.keys() == resumed.keys() == {0, 1}
    for w in full:
        assert [k for k, _ in resumed[w]] == [k for k, _ in full[w]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed[w], full[w]))
    assert sum(len(v) for v in full.values()) == 20             # 22 rows, a dead link and a JPEG


def test_ranks_and_workers_read_disjoint_rows_covering_the_input(tmp_path, server, bodies):
    meta = _meta(tmp_path, server, "k", bodies, 23)
    stream = UrlClipStream(meta, _cfg(block_rows=3))
    parts = [stream.rows_for(0, r, 2, w, 2).tolist() for r in range(2) for w in range(2)]
    assert sorted(sum(parts, [])) == list(range(23)) and all(parts)
    assert stream.rows_for(1, 0, 2, 0, 2).tolist() != parts[0]  # another epoch, another order
    ranked = UrlClipStream(meta, _cfg(block_rows=3, rank=1, world_size=2))
    got = _by_worker(list(DataLoader(ranked, batch_size=None, num_workers=2)))
    assert {w: [int(k) for k, _ in v] for w, v in got.items()} == {w: parts[2 + w] for w in range(2)}


def test_cache_then_ingest_retry_failed_equals_a_direct_ingest(tmp_path, server, bodies):
    special = {2: ("mp4", ["404"], bodies["mp4"]), 5: ("mp4", ["ok"], bodies["jpeg"]),
               7: ("mp4", ["500"], bodies["mp4"]), 9: ("mp4", ["ok"], bodies["cut"])}
    meta = _meta(tmp_path, server, "c", bodies, 12, special)
    cache = tmp_path / "cache"
    cfg = _cfg(block_rows=5, clip_start="random", size=(32, 24), cache=str(cache),
               fetch=dataclasses.replace(FETCH, timeout_s=5))
    stream = UrlClipStream(meta, cfg)
    first_block = stream.blocks_for(0, 0, 1, 0, 1)[0]
    n0 = len(stream.block_rows(first_block, 0))
    for item in stream:                                         # stopped inside the second block
        if item["position"] > n0:
            break
    shards = sorted(p.name for p in (cache / "shards").iterdir())
    assert shards == [f"train-{first_block:06d}.status.json", f"train-{first_block:06d}.tar"]  # no partial shard
    assert not (cache / "manifest.json").exists()
    before = len(server.log)
    again = UrlClipStream(meta, cfg)
    clips = {i["key"]: i["frames"] for i in again}               # the cached block is read locally
    requested = {int(p.split("/")[-1].split(".")[0]) for p, _ in server.log[before:]}
    assert not requested & set(again.block_rows(first_block, 0).tolist())
    assert again.counters["cached"] == n0 and len(clips) == 8
    fetch = ["--samples-per-shard", "5", "--timeout", "5", "--retries", "1", "--backoff", "0.01",
             "--concurrency", "2", "--allow-private-urls"]
    proc = run_cli("ingest", "webvid", meta, "--out", cache, "--retry-failed", *fetch, timeout=120)
    assert proc.returncode == 2, proc.stderr                    # the 4 faulty rows fail again
    direct = tmp_path / "direct"
    ingest_webvid(meta, WebvidConfig(out=direct, samples_per_shard=5, fetch=dataclasses.replace(
        FETCH, timeout_s=5, concurrency=2)))
    a, b = ShardStore(str(cache)), ShardStore(str(direct))
    assert a.manifest.files == b.manifest.files and a.verify() == [] and len(a.manifest.files) == 3
    for name in ("train-000000", "train-000001", "train-000002"):
        sa, sb = (json.loads((s / "shards" / f"{name}.status.json").read_text()) for s in (cache, direct))
        assert sa["samples"] == sb["samples"]
    # and the store streams the clips the URLs gave (same keys, same pixels)
    shard_clips = {i["key"]: i["frames"] for i in ClipStream(direct, config=StreamConfig(
        num_frames=T, size=(32, 24), seed=0))}
    assert shard_clips.keys() == clips.keys()
    assert all(torch.equal(shard_clips[k], clips[k]) for k in clips)


def test_metadata_is_read_by_blocks_with_the_ingest_values(tmp_path, server, bodies):
    meta = _meta(tmp_path, server, "m", bodies, 17, no_url=(4,))
    rows = read_meta(meta)
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=4)
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    for src in (meta, parquet, saved):
        m = MetaRows(src, block_rows=5)
        assert (m.num_rows, m.num_blocks) == (17, 4)
        m = pickle.loads(pickle.dumps(m))                      # what a DataLoader worker gets
        assert [r for b in range(4) for r in m.block(b)] == rows, src
        assert m.block(3, ["contentUrl"]) == [{"contentUrl": r["contentUrl"]} for r in rows[15:]]
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "nourl.parquet")
    with pytest.raises(SourceError, match="no URL column.*nourl.parquet"):
        MetaRows(tmp_path / "nourl.parquet")


def test_trainer_logs_counts_stops_when_the_server_goes_dark_and_resumes_bit_identically(tmp_path, server,
                                                                                          bodies):
    meta = _meta(tmp_path, server, "t", bodies, 16, {3: ("mp4", ["404"], bodies["mp4"])})
    kw = dict(urls=str(meta), frames=2, size=32, image_size=28, steps=4, ckpt_every=2, log_every=1,
              sample_every=0, lr=1e-3, warmup_steps=1, device="cpu", in_flight=2, min_success_window=4,
              allow_private_urls=True, fetch={"timeout_s": 2, "retries": 0})
    a = train(FoveatedTrainConfig(out=str(tmp_path / "a"), **kw))
    assert [r["stream_ok"] for r in a.records] == [2, 2, 2, 2]
    assert sum(r["stream_failed_dead_link"] for r in a.records) == 1 and a.records[0]["stream_failed"] == 0
    run_b = FoveatedTrainConfig(out=str(tmp_path / "b"), **kw)
    server.max_requests = len(server.log) + 6                   # then every request answers 503
    try:
        with pytest.raises(SourceError, match=r"below min_success 0.5.*http_error [34]"):
            train(run_b)
    finally:
        server.max_requests = 100_000
    assert torch.load(tmp_path / "b" / "latest.pth", weights_only=True)["step"] == 2
    b = train(run_b)                                            # resumed from step 2, the server is back
    assert b.resumed_from == 2
    wa, wb = (torch.load(r / "latest.pth", weights_only=True)["model"] for r in (a.out, b.out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    losses = [[(r["step"], r["loss_fine"]) for r in read_metrics(x / "metrics.jsonl")] for x in (a.out, b.out)]
    assert losses[0] == losses[1]


def test_cli_refuses_loopback_urls_unless_allowed(tmp_path, server, bodies):
    meta = _meta(tmp_path, server, "x", bodies, 8)
    proc = run_cli("train", "foveated-caption", "--urls", meta, "--out", tmp_path / "run", "--frames", "2",
                   "--size", "32", "--image-size", "28", "--steps", "2", "--device", "cpu", "--num-workers", "1",
                   "--min-success-window", "3", timeout=240)
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "0 of the last 3 downloads" in err and "refused 3" in err and "allow_private_urls" in err, err
    assert "Traceback" not in proc.stderr
    assert not any(p.startswith("/x/") for p, _ in server.log)   # nothing was requested
