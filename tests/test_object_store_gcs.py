"""Stores in a Google Cloud Storage bucket (issue 14, item 2), through gcsfs against a GCS JSON API server on
127.0.0.1 (`gcp-storage-emulator`, started here, in memory). gcsfs is pointed at it through fsspec's
configuration (`endpoint_url`, anonymous token), never patched; the CLI subprocesses get the same settings as
`FSSPEC_GS_*`.

gcsfs 2026.10 probes every bucket for Google's zonal / hierarchical-namespace types over gRPC, which an
emulator does not serve (a 60 s timeout per bucket); `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`, read when
gcsfs is imported, turns the probe off. It is set before anything here imports gcsfs.
"""

from __future__ import annotations

import os
import socket

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import assert_batches_equal, fsspec_protocol, loader_batches, run_cli  # noqa: E402

from shardyard import open_store  # noqa: E402
from shardyard.ingest.dino import DinoConfig, ingest_dino  # noqa: E402
from shardyard.ingest.runner import IngestConfig, run_ingest  # noqa: E402
from shardyard.ingest.yam import YamConfig, YamSource  # noqa: E402
from shardyard.loaders import EpisodeDataset, TokenDataset  # noqa: E402
from shardyard.models.backbones import BackboneConfig  # noqa: E402
from shardyard.stores.remote import pull, push  # noqa: E402
from shardyard.testing import SyntheticConfig, write_synthetic_yam  # noqa: E402

pytest.importorskip("gcsfs")
emulator = pytest.importorskip("gcp_storage_emulator.server")
pytestmark = pytest.mark.slow

BUCKET = "shardyard-gcs-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator with a bucket, and fsspec's `gs` configuration (here and as FSSPEC_GS_* for
    subprocesses) pointing at it; yields its endpoint."""
    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    conf = {"endpoint_url": endpoint, "token": "anon", "project": "shardyard-test"}
    env = {"FSSPEC_GS_ENDPOINT_URL": endpoint, "FSSPEC_GS_TOKEN": "anon", "FSSPEC_GS_PROJECT": "shardyard-test",
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg"))}  # the CLI's staging directories
    with fsspec_protocol("gs", conf, env):
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Local stores: an episodic store of 3 synthetic YAM demos and its DINO feature store."""
    root = tmp_path_factory.mktemp("gcsstore")
    write_synthetic_yam(root / "raw", SyntheticConfig(num_episodes=3, steps=16, width=48, height=32))
    run_ingest(YamSource(YamConfig(root=root / "raw")), IngestConfig(out=root / "yam", commit_every=1))
    ingest_dino(DinoConfig(store=str(root / "yam"), out=root / "dino", batch_size=8, field="obs.rgb.front",
                           backbone=BackboneConfig(spec="tiny-random-dinov2", image_size=(28, 28))))
    return root


def test_push_open_and_load_from_a_gcs_bucket(gcs, local, tmp_path):
    """Push -> open_store and the loaders with 2 forked DataLoader workers give the local copy's data;
    pull checks every file against the pushed checksums."""
    for name in ("yam", "dino"):
        push(local / name, f"gs://{BUCKET}/{name}")
    remote, here = open_store(f"gs://{BUCKET}/yam"), open_store(str(local / "yam"))
    assert remote.episode_keys == here.episode_keys and remote.stats == here.stats
    for e in range(here.num_episodes):
        for k, v in here.read(e).items():
            np.testing.assert_array_equal(remote.read(e)[k], v, err_msg=k)
    deltas = {"obs.rgb.front": [0], "action": list(range(4))}
    assert_batches_equal(loader_batches(EpisodeDataset(f"gs://{BUCKET}/yam", deltas)),
                         loader_batches(EpisodeDataset(str(local / "yam"), deltas)))
    assert_batches_equal(loader_batches(TokenDataset(f"gs://{BUCKET}/dino", store=f"gs://{BUCKET}/yam")),
                         loader_batches(TokenDataset(local / "dino", store=str(local / "yam"))))
    assert pull(f"gs://{BUCKET}/yam", tmp_path / "copy").copied > 0
    np.testing.assert_array_equal(open_store(str(tmp_path / "copy")).read(2)["obs.rgb.front"],
                                  here.read(2)["obs.rgb.front"])


def test_ingest_to_a_gcs_bucket_from_the_cli(gcs, local):
    """`ingest yam --out gs://...` (staged, one upload per commit group, manifest last) gives the local store."""
    url = f"gs://{BUCKET}/ingested"
    run_cli("ingest", "yam", local / "raw", "--out", url, "--commit-every", "1", check=True)
    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    assert len(fs.ls(f"{BUCKET}/ingested/progress")) == 3  # one commit record per group
    remote, here = open_store(url), open_store(str(local / "yam"))
    assert remote.episode_keys == here.episode_keys and remote.stats == here.stats
    for e in range(here.num_episodes):
        np.testing.assert_array_equal(remote.read(e)["obs.rgb.front"], here.read(e)["obs.rgb.front"])
