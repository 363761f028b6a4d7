"""Stores in a Hugging Face Hub dataset repo (issue 23), against the Hub double of `tests/hubserver.py` on
127.0.0.1: `shardyard push STORE hf://datasets/ORG/NAME` and `shardyard pull` (the real CLI, as subprocesses
with their own HF_ENDPOINT / HF_HUB_OFFLINE=0 / HF_HOME) round trip a store byte for byte, and
`open_store("hf://datasets/ORG/NAME")` with `EpisodeDataset` over 2 forked DataLoader workers (each opens its
own `HfFileSystem`) gives the local copy's batches, as do `TokenDataset` and `ClipStream` (a shard store in a
repo). A push goes up in a few commits (`stores.hub`), makes the repo when missing, writes a dataset card, and
resumes after a SIGKILL between two commits (the kill point fixed by `--pause-file`). In this process the `hf`
filesystem finds the server through fsspec's configuration (`endpoint`), as the S3 tests find moto, and the
client reaches only 127.0.0.1 (`hubserver.loopback_client`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_batches_equal, fsspec_protocol, loader_batches, sigkill_group, wait_paused
from hubserver import git_blob_sha, running_hub

from shardyard import open_store
from shardyard.errors import StoreError
from shardyard.ingest.dino import DinoConfig, ingest_dino
from shardyard.ingest.runner import IngestConfig, run_ingest
from shardyard.ingest.yam import YamConfig, YamSource
from shardyard.loaders.episodes import EpisodeDataset
from shardyard.loaders.streaming import ClipStream, StreamConfig
from shardyard.loaders.tokens import TokenDataset
from shardyard.models.backbones import BackboneConfig
from shardyard.stores.hub import CommitLimits
from shardyard.stores.remote import StagedStore, pull, push
from shardyard.stores.wds import Sample, ShardWriter
from shardyard.testing import SyntheticConfig, write_synthetic_yam
from shardyard.video import write_video

pytest.importorskip("huggingface_hub")
from huggingface_hub import CommitOperationAdd, HfApi  # noqa: E402


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The server, with fsspec's `hf` configuration in this process pointing at it (not in the CLI's
    subprocesses: they find it through HF_ENDPOINT or `-S endpoint=...`)."""
    with running_hub(tmp_path_factory.mktemp("hub")) as server:
        with fsspec_protocol("hf", {"endpoint": server.endpoint}, {}):
            yield server


@pytest.fixture(scope="module")
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=False)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """A tiny episodic store: 2 synthetic YAM demos of 12 steps, 64x48 frames (one commit: few files)."""
    root = tmp_path_factory.mktemp("hubstore")
    write_synthetic_yam(root / "raw", SyntheticConfig(num_episodes=2, steps=12, width=64, height=48))
    run_ingest(YamSource(YamConfig(root=root / "raw")), IngestConfig(out=root / "yam"))
    return root / "yam"


def hub_cli(hub, home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`shardyard ARGS` in a subprocess that may reach the server (`HubServer.client_env`, or `env`)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("FSSPEC_HF", "HF_ENDPOINT"))}
    child = {**inherited, **(env if env is not None else hub.client_env(home)), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shardyard.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=child)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pushed_repo(hub, api, local, tmp_path_factory) -> tuple[str, int]:
    """`local` pushed with the CLI (HF_ENDPOINT in its environment) into a dataset repo made beforehand:
    the store's URL and the number of commits the push made."""
    api.create_repo("org/tiny", repo_type="dataset")
    url, before = "hf://datasets/org/tiny", len(hub.requests("POST", "/api/datasets/org/tiny/commit/"))
    proc = hub_cli(hub, tmp_path_factory.mktemp("home"), "push", local, url)
    assert proc.returncode == 0, proc.stderr
    assert "file(s) uploaded" in proc.stdout
    return url, len(hub.requests("POST", "/api/datasets/org/tiny/commit/")) - before


@pytest.fixture(scope="module")
def pushed(pushed_repo) -> str:
    return pushed_repo[0]


def test_push_then_pull_round_trips_byte_for_byte(hub, api, local, pushed, tmp_path):
    """Every store file is in the repo with its bytes (the git blob oids match; a dataset card may sit beside
    them), and `pull` (endpoint as a `-S` storage option, no HF_ENDPOINT) gives back the same files, byte for
    byte; pulling again (the library's `pull`, in this process) downloads nothing."""
    want = tree_bytes(local)  # push wrote checksums.json into the store too
    remote = {f.path: f.blob_id for f in api.list_repo_tree("org/tiny", repo_type="dataset", recursive=True)
              if hasattr(f, "blob_id")}
    assert {p: remote.get(p) for p in want} == {p: git_blob_sha(d) for p, d in want.items()}
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = hub_cli(hub, tmp_path, "pull", pushed, tmp_path / "copy", "-S", f"endpoint={hub.endpoint}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert tree_bytes(tmp_path / "copy") == want
    again = pull(pushed, tmp_path / "copy")
    assert again.copied == 0 and again.skipped == len(want) - 1  # checksums.json is rewritten, not counted


def test_open_store_and_episode_dataset_read_the_repo_like_the_local_copy(hub, local, pushed):
    """`open_store("hf://datasets/org/tiny")` reads every episode as the local copy does, frames through
    ranged GETs of the shard file; `EpisodeDataset` batches through 2 forked DataLoader workers are equal."""
    remote, here = open_store(pushed), open_store(str(local))
    assert remote.episode_keys == here.episode_keys and remote.stats == here.stats
    before = len(hub.log)
    for e in range(here.num_episodes):
        a, b = remote.read(e), here.read(e)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    frames = [r for r in hub.log[before:] if r[0] == "GET" and "/resolve/main/data/obs.rgb.front/c/" in r[1]]
    assert frames and all(r[2] and r[2].startswith("bytes=") for r in frames)  # ranged, never whole shards
    deltas = {"obs.rgb.front": [0], "action": range(4), "obs.eef_pos": [-1, 0]}
    assert_batches_equal(loader_batches(EpisodeDataset(pushed, deltas=deltas)),
                         loader_batches(EpisodeDataset(str(local), deltas=deltas)))


def test_push_creates_the_repo(hub, api, local, tmp_path):
    """`push` to a dataset repo that does not exist yet makes it."""
    proc = hub_cli(hub, tmp_path, "push", local, "hf://datasets/org/created")
    assert proc.returncode == 0, proc.stderr
    assert api.dataset_info("org/created").sha


def test_push_makes_few_commits(local, pushed_repo):
    """A store of more than a dozen files goes up in at most 4 commits."""
    assert len([p for p in local.rglob("*") if p.is_file()]) > 12 and pushed_repo[1] <= 4


def test_frame_reads_are_exact_byte_ranges(hub, local, pushed):
    """Each frame read of an opened store is one ranged GET of that frame's bytes, not a read-ahead block
    to the end of the shard (fsspec's default buffered file would ask for 5 MB; `ProcessLocalFS.cat_file`)."""
    store = open_store(pushed)
    store.read_rows("obs.rgb.front", 0, 1)  # the shard index, read once
    before = len(hub.log)
    for i in range(1, 6):
        store.read_rows("obs.rgb.front", i, i + 1)
    ranges = [r[2] for r in hub.log[before:] if "/resolve/main/data/obs.rgb.front/c/" in r[1]]
    shard = (local / "data/obs.rgb.front/c/0/0/0/0").stat().st_size
    spans = [int(b) - int(a) + 1 for a, b in (r.removeprefix("bytes=").split("-") for r in ranges)]
    assert len(spans) == 5 and all(0 < n < shard // 8 for n in spans), (spans, shard)


def commits(hub, repo: str) -> int:
    return len(hub.requests("POST", f"/api/datasets/{repo}/commit/"))


def test_push_killed_between_commits_resumes_and_pulls_byte_for_byte(hub, api, local, tmp_path):
    """The CLI pushes 4 files per commit; paused after its 2nd commit (`--pause-file`), it is SIGKILLed there:
    the repo holds those 8 files and no manifest (not a store yet). The rerun skips them (the remote blob ids
    equal the local files'), commits the rest and the manifest, and a pull gives the store byte for byte."""
    url, pause = "hf://datasets/org/killed", tmp_path / "pause"
    pause.touch()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FSSPEC_HF", "HF_ENDPOINT"))},
           **hub.client_env(tmp_path), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "shardyard.cli", "push", str(local), url, "--commit-files", "4",
                             "--pause-file", str(pause), "--pause-after", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    assert "paused after commit 2" in wait_paused(proc, timeout=120)
    sigkill_group(proc)
    files = api.list_repo_files("org/killed", repo_type="dataset")
    data = [p for p in files if p not in (".gitattributes", "README.md")]
    assert len(data) == 8 and "manifest.json" not in files and commits(hub, "org/killed") == 2
    with pytest.raises(StoreError):
        open_store(url)
    want = tree_bytes(local)
    proc = hub_cli(hub, tmp_path, "push", local, url, "--commit-files", "4")
    assert proc.returncode == 0, proc.stderr
    assert "8 already there" in proc.stdout
    # the rest in ceil(n / 4) data commits, then one with checksums.json, the card and the manifest
    assert commits(hub, "org/killed") == 2 + -(-(len(want) - 2 - 8) // 4) + 1
    assert pull(url, tmp_path / "copy").copied == len(want) - 1  # checksums.json is written, not counted
    assert tree_bytes(tmp_path / "copy") == want


def test_push_replaces_a_changed_file_of_the_same_size_and_keeps_an_owners_card(hub, api, local, tmp_path):
    """Resuming compares content, not sizes: a remote file changed behind the push's back (same size) is
    uploaded again, and nothing else. A README.md without the `shardyard` tag is the owner's: kept, as is
    `.gitattributes`, by `push` and by `StagedStore.finish` (which deletes the remote files a job removed)."""
    repo, url = "org/owned", "hf://datasets/org/owned"
    api.create_repo(repo, repo_type="dataset")
    card = b"---\nlicense: mit\n---\n# my own card\n"
    api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=repo, repo_type="dataset")
    first = push(local, url)
    assert first.copied == len(tree_bytes(local)) and first.skipped == 0
    name = "data/action/c/0/0"
    good = (local / name).read_bytes()
    api.create_commit(repo, [CommitOperationAdd(name, bytes(b ^ 0xFF for b in good))], commit_message="damage",
                      repo_type="dataset")
    again = push(local, url)
    assert (again.copied, again.bytes) == (1, len(good))
    staged = StagedStore(url, tmp_path / "staging")
    staged.prepare()  # resumes from the repo: the store's files, not the repo's own
    assert set(tree_bytes(tmp_path / "staging")) == set(tree_bytes(local))
    (tmp_path / "staging" / "report.json").unlink()  # a file the job removed: deleted remotely by finish
    staged.finish()
    files = set(api.list_repo_files(repo, repo_type="dataset"))
    assert {".gitattributes", "README.md"} <= files and "report.json" not in files
    assert Path(api.hf_hub_download(repo, "README.md", repo_type="dataset", cache_dir=tmp_path)).read_bytes() == card


def test_the_dataset_card_says_what_the_store_holds(api, pushed, tmp_path):
    """The card of a pushed store: tagged `shardyard` (so the next push may rewrite it), the dataset viewer
    off, every field with its stats, and how to open and pull the store."""
    info = api.dataset_info("org/tiny")
    assert "shardyard" in info.card_data["tags"] and info.card_data["viewer"] is False
    text = Path(api.hf_hub_download("org/tiny", "README.md", repo_type="dataset", cache_dir=tmp_path)).read_text()
    assert "| `obs.rgb.front` | image | uint8 | (48, 64, 3) |" in text and "| `action` | vector |" in text
    assert f'open_store("{pushed}")' in text and f"shardyard pull {pushed}" in text


def test_commit_limits_cut_batches_and_refuse_crowded_folders():
    lim = CommitLimits(files=3, bytes=100, regular_bytes=50)
    sizes = {"a": 10, "b": 10, "c": 10, "d": 10, "e": 45, "f": 99, "g": 200, "h": 1}
    assert lim.batches(sizes) == [["a", "b", "c"], ["d"], ["e"], ["f"], ["g"], ["h"]]
    big = {"a": 20_000_000, "b": 20_000_000, "c": 1}  # over 10 MB: LFS, outside the regular budget
    assert CommitLimits(bytes=1 << 30, regular_bytes=5).batches(big) == [["a", "b", "c"]]
    CommitLimits(folder_entries=3).check_folders(["d/1", "d/2", "d/3", "x"], "s")
    with pytest.raises(StoreError, match="'d' would hold 4 entries"):
        CommitLimits(folder_entries=3).check_folders(["d/1", "d/2", "d/3", "d/4/x"], "s")


def _clip(tmp: Path, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.integers(0, 255, (1, 24, 32, 3)) + np.arange(12)[:, None, None, None] * 8, 0, 255)
    write_video(tmp / f"clip{seed}.mp4", frames.astype(np.uint8), fps=12)
    return (tmp / f"clip{seed}.mp4").read_bytes()


@pytest.fixture(scope="module")
def more(hub, local, pushed, tmp_path_factory) -> Path:
    """A feature store of `local` (tiny random DINOv2) and a 2-shard store of clips, pushed to org/dino and
    org/clips (library `push`, in this process)."""
    root = tmp_path_factory.mktemp("more")
    ingest_dino(DinoConfig(store=str(local), out=root / "dino", batch_size=8, field="obs.rgb.front",
                           backbone=BackboneConfig(spec="tiny-random-dinov2", image_size=(28, 28))))
    with ShardWriter(root / "clips") as w:
        for si in range(2):
            w.write_shard(si, [Sample(f"{si * 3 + j:06d}", {"mp4": _clip(root, si * 3 + j), "txt": b"c"})
                               for j in range(3)], [])
    push(root / "dino", "hf://datasets/org/dino")
    push(root / "clips", "hf://datasets/org/clips")
    return root


def test_token_dataset_and_clip_stream_read_the_repos_like_the_local_copies(hub, local, pushed, more):
    """`TokenDataset` (tokens in org/dino, step fields in org/tiny) and `ClipStream` over the shard store in
    org/clips, each through 2 forked DataLoader workers, give the local copies' batches; the clip shards are
    read through the Hub's resolve route."""
    assert_batches_equal(loader_batches(TokenDataset("hf://datasets/org/dino", store=pushed)),
                         loader_batches(TokenDataset(more / "dino", store=str(local))))
    cfg = dict(num_frames=4, size=16, shuffle_buffer=0)
    before = len(hub.log)
    assert_batches_equal(loader_batches(ClipStream("hf://datasets/org/clips", config=StreamConfig(**cfg))),
                         loader_batches(ClipStream(str(more / "clips"), config=StreamConfig(**cfg))))
    assert [r for r in hub.log[before:] if r[0] == "GET" and "/datasets/org/clips/resolve/" in r[1]]
