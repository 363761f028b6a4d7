"""Stores in an S3 bucket (issue 14, item 2), against moto's S3 server on 127.0.0.1 (its server mode, as
s3fs's own suite runs it; s3fs is pointed at it through fsspec's configuration, never patched).

A logging WSGI layer in front of moto records each request (method, key, Range header), so the tests can
say that frame reads are ranged reads of shard files, and that an ingest to `s3://` uploads commit records
after the data and the manifest last.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest
from conftest import assert_batches_equal, fsspec_protocol, loader_batches, run_cli

from shardyard import open_store
from shardyard.errors import StoreError
from shardyard.ingest.dino import DinoConfig, ingest_dino
from shardyard.ingest.runner import IngestConfig, run_ingest
from shardyard.ingest.yam import YamConfig, YamSource
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.loaders.tokens import TokenDataset
from shardyard.loaders.windows import EpisodeWindows
from shardyard.models.backbones import BackboneConfig
from shardyard.stores.features import open_features
from shardyard.stores.frames.zarr_shard import read_shard_index
from shardyard.stores.remote import StagedStore, pull, push
from shardyard.stores.remote_fs import parse_storage_options
from shardyard.stores.wds import Sample, ShardWriter
from shardyard.testing import SyntheticConfig, write_synthetic_yam
from shardyard.tools.verify import verify_store
from shardyard.video import write_video

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.slow

BUCKET = "shardyard-test"


class S3Server:
    """moto's S3 app served on 127.0.0.1 (werkzeug, threaded), every request logged."""

    def __init__(self) -> None:
        from werkzeug.serving import make_server

        self.log: list[tuple[str, str, str | None]] = []
        app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)

        def logged(environ, start_response):
            self.log.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("HTTP_RANGE")))
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, logged, threaded=True,
                                  request_handler=moto_server.MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self, method: str, prefix: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.log if r[0] == method and r[1].startswith(f"/{BUCKET}/{prefix}")]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, with fsspec's s3 configuration (in this process, and as FSSPEC_S3_* for subprocesses)
    pointing at it; yields it with a bucket made."""
    server = S3Server()
    conf = {"endpoint_url": server.endpoint, "key": "testing", "secret": "testing"}
    env = {"FSSPEC_S3_ENDPOINT_URL": server.endpoint, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing",
           "AWS_DEFAULT_REGION": "us-east-1",
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg"))}  # the CLI's staging directories
    with fsspec_protocol("s3", conf, env):
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield server
    server.server.shutdown()


def _clip(tmp: Path, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.integers(0, 255, (1, 24, 32, 3)) + np.arange(12)[:, None, None, None] * 8, 0, 255)
    write_video(tmp / f"clip{seed}.mp4", frames.astype(np.uint8), fps=12)
    return (tmp / f"clip{seed}.mp4").read_bytes()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Local stores: episodic (3 synthetic YAM demos), its feature store, a 2-shard store of clips."""
    root = tmp_path_factory.mktemp("objstore")
    write_synthetic_yam(root / "raw", SyntheticConfig(num_episodes=3, steps=24, width=64, height=48))
    run_ingest(YamSource(YamConfig(root=root / "raw")), IngestConfig(out=root / "yam", commit_every=1))
    bb = BackboneConfig(spec="tiny-random-dinov2", image_size=(56, 56))
    ingest_dino(DinoConfig(store=str(root / "yam"), out=root / "dino", backbone=bb, batch_size=8,
                           field="obs.rgb.front"))
    with ShardWriter(root / "clips") as w:
        for si in range(2):
            w.write_shard(si, [Sample(f"{si * 3 + j:06d}", {"mp4": _clip(root, si * 3 + j), "txt": b"c"})
                               for j in range(3)], [])
    return root


@pytest.fixture(scope="module")
def pushed(s3, local):
    """The three stores pushed to the bucket (library `push`)."""
    for name in ("yam", "dino", "clips"):
        push(local / name, f"s3://{BUCKET}/{name}")
    return {name: f"s3://{BUCKET}/{name}" for name in ("yam", "dino", "clips")}


def test_open_store_reads_the_bucket_like_the_local_copy(s3, local, pushed):
    remote, here = open_store(pushed["yam"]), open_store(str(local / "yam"))
    assert remote.episode_keys == here.episode_keys and remote.stats == here.stats
    before = len(s3.log)
    for e in range(here.num_episodes):
        a, b = remote.read(e), here.read(e)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    frames = [r for r in s3.log[before:] if r[0] == "GET" and "/data/obs.rgb.front/c/" in r[1]]
    assert frames and all(r[2] and r[2].startswith("bytes=") for r in frames)  # ranged, never whole shards
    f_remote, f_here = open_store(pushed["dino"]), open_features(local / "dino")
    n = f_here.num_samples
    np.testing.assert_array_equal(f_remote.patch_tokens(0, n), f_here.patch_tokens(0, n))
    np.testing.assert_array_equal(f_remote.missing, f_here.missing)
    assert open_store(pushed["clips"]).num_samples == 6


def test_loaders_with_workers_give_the_sameloader_batches(s3, local, pushed):
    """EpisodeWindows, TokenDataset and ClipStream over the bucket with 2 forked DataLoader workers (each
    opens its own s3 filesystem) give the batches of the local copy."""
    assert_batches_equal(loader_batches(EpisodeWindows(pushed["yam"], window=4, split=None)),
                          loader_batches(EpisodeWindows(str(local / "yam"), window=4, split=None)))
    assert_batches_equal(loader_batches(TokenDataset(pushed["dino"], store=pushed["yam"])),
                          loader_batches(TokenDataset(local / "dino", store=str(local / "yam"))))
    cfg = dict(num_frames=4, size=16, shuffle_buffer=0)
    assert_batches_equal(loader_batches(ClipStream(pushed["clips"], config=StreamConfig(**cfg))),
                          loader_batches(ClipStream(str(local / "clips"), config=StreamConfig(**cfg))))


def test_push_is_resumable_and_pull_checks_every_file(s3, local, pushed, tmp_path):
    again = push(local / "yam", pushed["yam"])
    assert again.skipped > 0 and again.copied == 2  # checksums.json and the manifest, nothing else
    proc = run_cli("pull", pushed["yam"], tmp_path / "copy", "--storage-option", f"endpoint_url={s3.endpoint}",
                   check=True)
    assert "downloaded" in proc.stdout
    ra, rb = open_store(str(tmp_path / "copy")), open_store(str(local / "yam"))
    np.testing.assert_array_equal(ra.read(1)["obs.rgb.front"], rb.read(1)["obs.rgb.front"])
    assert pull(pushed["yam"], tmp_path / "copy").copied == 0  # all there already: nothing downloaded
    # a corrupted object of the same size is refused, naming the file
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    name = "data/obs.eef_pos/zarr.json"
    good = fs.cat_file(f"{BUCKET}/yam/{name}")
    fs.pipe_file(f"{BUCKET}/yam/{name}", good.replace(b'"', b"'", 1))
    (tmp_path / "copy" / name).unlink()
    try:
        with pytest.raises(StoreError, match="obs.eef_pos/zarr.json"):
            pull(pushed["yam"], tmp_path / "copy")
    finally:
        fs.pipe_file(f"{BUCKET}/yam/{name}", good)


def test_verify_a_store_in_the_bucket(s3, local, pushed):
    """`shardyard verify s3://...` (CLI) of each pushed store is clean; a flipped byte inside a frame chunk
    of the bucket's copy and a deleted object are each named by their s3:// file, field and episode."""
    for url in pushed.values():
        proc = run_cli("verify", url, "--storage-option", f"endpoint_url={s3.endpoint}")
        assert proc.returncode == 0 and "intact" in proc.stdout and "downloaded" in proc.stdout, proc.stdout
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    field, store = "obs.rgb.front", open_store(str(local / "yam"))
    rows = json.loads((local / "yam" / "data" / field / "zarr.json").read_text())["chunk_grid"]["configuration"]
    frames, lowdim = f"data/{field}/c/0/0/0/0", "data/obs.eef_pos/c/0/0"
    row = int(store.episode_starts[1]) + 1
    off, n = (int(v) for v in read_shard_index(local / "yam" / frames, rows["chunk_shape"][0])[row])
    good, kept = fs.cat_file(f"{BUCKET}/yam/{frames}"), fs.cat_file(f"{BUCKET}/yam/{lowdim}")
    bad = bytearray(good)
    bad[off + n // 2] ^= 0xFF
    fs.pipe_file(f"{BUCKET}/yam/{frames}", bytes(bad))
    fs.rm_file(f"{BUCKET}/yam/{lowdim}")
    try:
        report = verify_store(pushed["yam"], storage_options={"endpoint_url": s3.endpoint})
        chunk = next(d for d in report.damages if "crc32c" in d.reason)
        assert (chunk.file, chunk.field, chunk.episode, chunk.step) == (
            f"{pushed['yam']}/{frames}", field, store.episode_keys[1], 1), report.summary()
        gone = next(d for d in report.damages if d.reason == "file missing")
        assert gone.file == f"{pushed['yam']}/{lowdim}" and gone.field == "obs.eef_pos"
        proc = run_cli("verify", pushed["yam"], "--storage-option", f"endpoint_url={s3.endpoint}")
        assert proc.returncode == 1 and f"file={pushed['yam']}/{frames}" in proc.stdout
    finally:
        fs.pipe_file(f"{BUCKET}/yam/{frames}", good)
        fs.pipe_file(f"{BUCKET}/yam/{lowdim}", kept)


def test_ingest_to_bucket_uploads_each_commit_and_the_manifest_last(s3, local):
    url = f"s3://{BUCKET}/ingested"
    start = len(s3.log)
    run_cli("ingest", "yam", local / "raw", "--out", url, "--commit-every", "1", check=True)
    puts = [r[1][len(f"/{BUCKET}/ingested/"):] for r in s3.log[start:] if r[0] == "PUT" and "/ingested/" in r[1]]
    assert puts[-1] == "manifest.json" and puts.count("manifest.json") == 1
    records = [i for i, p in enumerate(puts) if p.startswith("progress/")]
    assert len(records) == 3  # one commit record per group (3 episodes, one per group), each uploaded once
    first_commit = records[0]
    assert any(p.startswith("data/obs.rgb.front/") for p in puts[:first_commit])  # data before its record
    remote, here = open_store(url), open_store(str(local / "yam"))
    assert remote.episode_keys == here.episode_keys and remote.stats == here.stats
    for e in range(here.num_episodes):
        np.testing.assert_array_equal(remote.read(e)["obs.rgb.front"], here.read(e)["obs.rgb.front"])


def test_storage_options_parse_and_nest():
    assert parse_storage_options(["endpoint_url=http://127.0.0.1:9", "anon=true", "client_kwargs.region_name=eu",
                                  "max_concurrency=4"]) == {
        "endpoint_url": "http://127.0.0.1:9", "anon": True, "client_kwargs": {"region_name": "eu"},
        "max_concurrency": 4}
    with pytest.raises(ValueError, match="key=value"):
        parse_storage_options(["endpoint_url"])


class _Stop(Exception):
    pass


def test_ingest_killed_after_two_commits_resumes_from_the_bucket(s3, local, tmp_path):
    """The job dies after its second commit reached the bucket; a rerun on a machine without the staging
    directory starts from the bucket's two committed episodes and gives the same store."""
    url = f"s3://{BUCKET}/resumed"
    first = StagedStore(url, tmp_path / "stage_a")
    first.prepare()
    commits = []

    def sync_then_die() -> None:
        first.sync()
        commits.append(1)
        if len(commits) == 2:
            raise _Stop

    source = YamSource(YamConfig(root=local / "raw"))
    with pytest.raises(_Stop):
        run_ingest(source, IngestConfig(out=first.local, commit_every=1), on_commit=sync_then_die)
    assert not fsspec.filesystem("s3").exists(f"{BUCKET}/resumed/manifest.json")
    second = StagedStore(url, tmp_path / "stage_b")  # another machine: nothing staged
    second.prepare()
    res = run_ingest(source, IngestConfig(out=second.local, commit_every=1), on_commit=second.sync)
    second.finish()
    assert res.num_already_committed == 2 and res.num_written == 1
    remote, here = open_store(url), open_store(str(local / "yam"))
    assert remote.episode_keys == here.episode_keys and remote.stats == here.stats
    for e in range(here.num_episodes):
        for k, v in here.read(e).items():
            np.testing.assert_array_equal(remote.read(e)[k], v, err_msg=k)


def test_ingest_dino_from_and_to_the_bucket(s3, local, pushed):
    url = f"s3://{BUCKET}/dino_out"
    run_cli("ingest", "dino", pushed["yam"], "--model", "tiny-random-dinov2", "--field", "obs.rgb.front",
            "--image-size", "56", "--batch-size", "8", "--out", url, check=True)
    a, b = open_features(url), open_features(local / "dino")
    n = b.num_samples
    np.testing.assert_array_equal(a.patch_tokens(0, n), b.patch_tokens(0, n))
    np.testing.assert_array_equal(a.cls_token(0, n), b.cls_token(0, n))
    assert json.loads(fsspec.filesystem("s3").cat_file(f"{BUCKET}/dino_out/checksums.json"))["files"]
    report = verify_store(url)  # token checksums uploaded with the commits; provenance against the bucket's yam
    assert report.ok and not report.warnings, report.summary()
    assert any(f"provenance against {pushed['yam']}" in c for c in report.checked)
    assert os.environ["FSSPEC_S3_ENDPOINT_URL"] == s3.endpoint
