"""LeRobot datasets on the Hub (issue 23, items 2 and 3), against the Hub double of `tests/hubserver.py` on
127.0.0.1: the real G1 (v2.1, AV1, 2 of its 100 episodes present) and SO-101 (v3.0, tabular) samples of
`../shared/data/lerobot` are uploaded to it first, then

- `ingest lerobot ORG/NAME[@REVISION] --episodes ...` (the CLI, as a subprocess with HF_ENDPOINT,
  HF_HUB_OFFLINE=0 and HF_HOME in a temp folder) downloads `meta/` and the selected episodes' files only,
  into the Hugging Face cache, records the repo id and the resolved commit in the manifest, names the
  selected episodes the repo lacks in one line, and a rerun downloads nothing;
- `export lerobot STORE --push-to-hub ORG/NAME` pushes a LeRobot v3.0 dataset tagged `v3.0` that the real
  `LeRobotDataset(ORG/NAME)` (lerobot 0.4.4, its own huggingface_hub 0.35, in the `.venv-lerobot` peer
  virtualenv) downloads from the same server and reads back with the store's frames and actions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SHARED, run_cli
from hubserver import running_hub
from test_export_lerobot import MEAN_TOL, P999_TOL, PEER, write_lerobot_v21

from shardyard import open_store

pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi  # noqa: E402

G1 = SHARED / "lerobot" / "unitree_g1_inspire_v2.1"
SO101 = SHARED / "lerobot" / "so101_record_test_v3.0"
SMALL = ["--image-size", "80x60", "--frame-codec", "lz4"]  # decoding is what is tested, not writing big frames


@pytest.fixture(scope="module")
def hub(tmp_path_factory, shared_data):
    """The server with the two samples uploaded: lerobot/g1 and lerobot/so101, each tagged with its codebase
    version (as LeRobot tags its datasets)."""
    with running_hub(tmp_path_factory.mktemp("hub")) as server:
        api = HfApi(endpoint=server.endpoint, token=False)
        for repo, folder, tag in (("lerobot/g1", G1, "v2.1"), ("lerobot/so101", SO101, "v3.0")):
            api.create_repo(repo, repo_type="dataset")
            api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset")
            api.create_tag(repo, tag=tag, repo_type="dataset")
        yield server


def cli(hub, home: Path, *args) -> subprocess.CompletedProcess:
    """`shardyard ARGS` able to reach the server (its HF_HOME, the Hugging Face cache, under `home`)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_ENDPOINT", "HF_HUB_CACHE"))},
           **hub.client_env(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shardyard.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def downloads(hub, since: int, repo: str) -> list[str]:
    """Repo paths the client fetched (GET on the resolve route) since log entry `since`."""
    marker = f"/datasets/{repo}/resolve/"
    return sorted({r[1].split(marker, 1)[1].split("/", 1)[1] for r in hub.log[since:]
                   if r[0] == "GET" and marker in r[1]})


def test_ingest_by_repo_id_fetches_only_the_selected_episodes_once(hub, tmp_path):
    """`--episodes 0-2` of lerobot/g1: meta/ and episode 2's parquet and mp4 come down (episode 1's do not;
    episode 0 is listed in meta but the repo has no files for it: one summary line, no report row); the
    manifest names the repo, the revision and its commit; a rerun into another store fetches nothing."""
    sha = HfApi(endpoint=hub.endpoint, token=False).dataset_info("lerobot/g1").sha
    before = len(hub.log)
    proc = cli(hub, tmp_path, "ingest", "lerobot", "lerobot/g1", "--out", tmp_path / "s", "--episodes", "0,2",
               *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert downloads(hub, before, "lerobot/g1") == [
        "data/chunk-000/episode_000002.parquet", "meta/episodes.jsonl", "meta/episodes_stats.jsonl",
        "meta/info.json", "meta/tasks.jsonl", "videos/chunk-000/observation.images.cam_high/episode_000002.mp4"]
    notes = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert len(notes) == 1 and "1 of 2 selected episode(s) have no data file" in notes[0] and ": 0" in notes[0]
    store = open_store(str(tmp_path / "s"))
    assert store.episode_keys == ["episode_000002"]
    table = pq.read_table(G1 / "data/chunk-000/episode_000002.parquet")
    state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert np.array_equal(store.read(0)["obs.state"], state) and store.read(0)["obs.rgb.cam_high"].shape[1:] == \
        (60, 80, 3)
    source = json.loads((tmp_path / "s" / "manifest.json").read_text())["source"]
    assert source["hub"] == {"repo_id": "lerobot/g1", "revision": "main", "commit": sha}
    assert source["episodes"] == "0, 2"
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["skipped"] == [] and any("1 of 2 selected" in n for n in report.get("notes", []))
    snap = tmp_path / "hf_home" / "hub" / "datasets--lerobot--g1" / "snapshots" / sha
    assert (snap / "meta" / "info.json").is_file() and not (snap / "data/chunk-000/episode_000001.parquet").exists()

    again = len(hub.log)
    proc = cli(hub, tmp_path, "ingest", "lerobot", "lerobot/g1", "--out", tmp_path / "s2", "--episodes", "0,2",
               *SMALL)
    assert proc.returncode == 0, proc.stderr
    # one request: what `main` resolves to (the listing is cached by commit, the files by content)
    assert [r[1] for r in hub.log[again:]] == ["/api/datasets/lerobot/g1/revision/main"]


def test_ingest_by_repo_id_at_a_tag_of_a_v30_dataset(hub, tmp_path):
    """`lerobot/so101@v3.0 --episodes 1,3`: a v3.0 data file holding every episode comes down once, the tag
    is recorded with its commit, and the two episodes equal the local sample's rows."""
    proc = cli(hub, tmp_path, "ingest", "lerobot", "lerobot/so101@v3.0", "--out", tmp_path / "s", "--episodes", "1,3",
               "--camera", "none")  # the sample's videos are not in it: stored without cameras, as asked
    assert proc.returncode == 0, proc.stderr
    store = open_store(str(tmp_path / "s"))
    assert store.episode_keys == ["episode_000001", "episode_000003"]
    eps = pq.read_table(SO101 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    data = pq.read_table(SO101 / "data/chunk-000/file-000.parquet")
    action = np.stack(data.column("action").to_numpy(zero_copy_only=False)).astype(np.float32)
    for i, e in enumerate((1, 3)):
        lo, hi = eps[e]["dataset_from_index"], eps[e]["dataset_to_index"]
        assert np.array_equal(store.read(i)["action"], action[lo:hi])
    hub_source = json.loads((tmp_path / "s" / "manifest.json").read_text())["source"]["hub"]
    refs = HfApi(endpoint=hub.endpoint, token=False).list_repo_refs("lerobot/so101", repo_type="dataset")
    assert hub_source == {"repo_id": "lerobot/so101", "revision": "v3.0", "commit": refs.tags[0].target_commit}


def test_a_missing_repo_revision_or_episode_is_a_named_error(hub, tmp_path):
    for spec, words in (("lerobot/absent", "no such dataset repo"), ("lerobot/g1@v9.9", "no revision 'v9.9'")):
        proc = cli(hub, tmp_path, "ingest", "lerobot", spec, "--out", tmp_path / "x")
        assert proc.returncode == 1 and words in proc.stderr and spec in proc.stderr, proc.stderr
    proc = cli(hub, tmp_path, "ingest", "lerobot", "lerobot/g1", "--out", tmp_path / "x", "--episodes", "7-5")
    assert proc.returncode == 1 and "ends before it starts" in proc.stderr
    proc = cli(hub, tmp_path, "ingest", "lerobot", "lerobot/g1", "--out", tmp_path / "x", "--episodes", "2,500-501")
    assert proc.returncode == 1 and "episodes 500-501 are not listed in meta (it lists 0-99)" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_partial_local_folder_selects_what_is_there_in_one_line(tmp_path):
    """The local G1 sample holds episodes 1 and 2 of its 100: `--episodes 0,2-9` stores episode 2, exit 0,
    and the 8 absent ones are one warning line, not 8 skipped rows."""
    proc = run_cli("ingest", "lerobot", G1, "--out", tmp_path / "s", "--episodes", "0,2-9", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert open_store(str(tmp_path / "s")).episode_keys == ["episode_000002"]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert len(lines) == 1 and "8 of 9 selected episode(s)" in lines[0] and "0, 3-9" in lines[0], lines
    assert json.loads((tmp_path / "s" / "report.json").read_text())["skipped"] == []


def test_export_pushed_to_the_hub_loads_in_lerobot_dataset(hub, tmp_path):
    """`export lerobot --push-to-hub org/toy` makes the repo, uploads the dataset (meta/ and the card last)
    and tags it v3.0; `LeRobotDataset("org/toy")` in the peer venv (its HF_ENDPOINT the server, its caches in
    tmp) downloads it and returns the store's actions exactly and its frames within the codec's tolerance."""
    if not (PEER / ".installed").exists():
        pytest.fail(f"the LeRobot peer virtualenv {PEER} is missing: run `make lerobot-venv` (make test builds it)")
    run_cli("ingest", "lerobot", write_lerobot_v21(tmp_path / "v21"), "--out", tmp_path / "s", "--frame-codec", "lz4",
            check=True)
    proc = cli(hub, tmp_path, "export", "lerobot", tmp_path / "s", "--out", tmp_path / "x", "--push-to-hub",
               "org/toy")
    assert proc.returncode == 0, proc.stderr
    assert "(tag v3.0)" in proc.stdout
    api = HfApi(endpoint=hub.endpoint, token=False)
    assert [t.name for t in api.list_repo_refs("org/toy", repo_type="dataset").tags] == ["v3.0"]
    assert "LeRobot" in api.dataset_info("org/toy").card_data["tags"]
    out = tmp_path / "dump.npz"
    env = {**os.environ, **hub.client_env(tmp_path), "PYTHONPATH": "", "HF_LEROBOT_HOME": str(tmp_path / "lerobot"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    peer = subprocess.run([str(PEER / "bin" / "python"), "-c", PEER_DUMP, "org/toy", str(out)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert peer.returncode == 0, peer.stderr[-4000:]
    assert (tmp_path / "lerobot" / "org" / "toy" / "meta" / "info.json").is_file()  # downloaded, not local
    got, store = np.load(out), open_store(str(tmp_path / "s"))
    frames = np.concatenate([store.read(e, ["obs.rgb.top"])["obs.rgb.top"] for e in range(store.num_episodes)])
    actions = np.concatenate([store.read(e, ["action"])["action"] for e in range(store.num_episodes)])
    assert np.array_equal(got["action"], actions) and got["episode_index"].tolist() == [0] * 24 + [1] * 17
    d = np.abs(got["observation.images.top"].astype(np.int16) - frames.astype(np.int16))
    assert d.reshape(len(d), -1).mean(1).max() <= MEAN_TOL and np.percentile(d, 99.9) <= P999_TOL, d.mean()


# `LeRobotDataset(repo_id)` with no root: it resolves the v3.0 tag, downloads into HF_LEROBOT_HOME/repo_id and
# reads every sample (frames as uint8, exact from LeRobot's float [0, 1]).
PEER_DUMP = """
import sys
import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

ds = LeRobotDataset(sys.argv[1], video_backend="torchcodec")
assert ds.revision == "v3.0", ds.revision
cams = list(ds.meta.video_keys)
rows = {k: [] for k in cams + ["action", "episode_index"]}
for i in range(len(ds)):
    item = ds[i]
    for k in cams:
        rows[k].append((item[k] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    for k in ("action", "episode_index"):
        rows[k].append(np.asarray(item[k]))
np.savez(sys.argv[2], **{k: np.stack(v) for k, v in rows.items()})
"""
