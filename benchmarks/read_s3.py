"""Loader throughput from an S3 bucket on a loopback S3 server (moto's, on 127.0.0.1) against the same store on
local disk, same DataLoader settings, in the same run (issue 14, item 2).

Figures (JSON lines): `read_s3.frames` (random single frames of an episodic store, samples/s) and
`read_s3.tokens` (`TokenDataset`, shuffled batches, samples/s), each with the local copy as the baseline.
Every request to the bucket is one HTTP round trip through moto's Python server, so the ratio is a lower
bound of what a real object store with parallel connections gives; it says how much the loaders' ranged
reads cost against `pread`. `--smoke` runs tiny inputs (seconds).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import figure  # noqa: E402

from shardyard import open_store  # noqa: E402
from shardyard.ingest.runner import IngestConfig, run_ingest  # noqa: E402
from shardyard.ingest.yam import YamConfig, YamSource  # noqa: E402
from shardyard.loaders.tokens import TokenDataset  # noqa: E402
from shardyard.stores.features import FeatureLayout, FeatureWriter, write_batch  # noqa: E402
from shardyard.stores.remote import push  # noqa: E402
from shardyard.testing import SyntheticConfig, write_synthetic_yam  # noqa: E402

BUCKET = "shardyard-bench"


def start_s3() -> str:
    """The moto S3 app on 127.0.0.1 (threaded werkzeug); fsspec's s3 config points at it. Returns the URL."""
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
    return endpoint


class Frames(torch.utils.data.Dataset):
    """Single frames `(3, H, W) uint8` of one image field, global step `i`."""

    def __init__(self, url: str, field: str) -> None:
        self.store, self.field = open_store(url), field

    def __len__(self) -> int:
        return self.store.num_steps

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.store.read_rows(self.field, i, i + 1)[0]).permute(2, 0, 1)


def rate(ds, n_items: int, batch: int) -> float:
    """Samples/s over `n_items` shuffled samples, 2 forked workers (after a warm-up batch per worker)."""
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=2, shuffle=True,
                                     multiprocessing_context="fork", generator=torch.Generator().manual_seed(0))
    it, seen = iter(dl), 0
    next(it), next(it)
    t0 = time.perf_counter()
    for b in it:
        seen += len(b["index"]) if isinstance(b, dict) else len(b)
        if seen >= n_items:
            break
    return seen / (time.perf_counter() - t0)


def build(root: Path, episodes: int, steps: int, size: int, tokens: int) -> tuple[Path, Path]:
    write_synthetic_yam(root / "raw", SyntheticConfig(num_episodes=episodes, steps=steps, width=size, height=size))
    run_ingest(YamSource(YamConfig(root=root / "raw")), IngestConfig(out=root / "yam"))
    lay = FeatureLayout(num_samples=tokens, grid=(16, 16), embed_dim=384, patch_size=14, batch_size=64)
    rng = np.random.default_rng(0)
    with FeatureWriter(root / "feat", key={"bench": 1}, layout=lay):
        for a, b in lay.batches():
            x = rng.standard_normal((b - a, 256, 384), dtype=np.float32)
            write_batch(root / "feat", a, x, x[:, 0], np.zeros(b - a, bool))
    return root / "yam", root / "feat"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=224, help="frame side, px")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--items", type=int, default=512, help="samples timed per figure")
    ap.add_argument("--smoke", action="store_true", help="tiny inputs, seconds")
    args = ap.parse_args()
    if args.smoke:
        args.episodes, args.steps, args.size, args.tokens, args.items = 2, 20, 32, 320, 32
    start_s3()
    with tempfile.TemporaryDirectory() as tmp:
        yam, feat = build(Path(tmp), args.episodes, args.steps, args.size, args.tokens)
        push(yam, f"s3://{BUCKET}/yam")
        push(feat, f"s3://{BUCKET}/feat")
        n = min(args.items, open_store(str(yam)).num_steps - 32)
        local = rate(Frames(str(yam), "obs.rgb.front"), n, 16)
        remote = rate(Frames(f"s3://{BUCKET}/yam", "obs.rgb.front"), n, 16)
        figure("read_s3.frames", remote, "frames/s", "same store on local disk", local,
               frame=f"{args.size}x{args.size}x3")
        n = min(args.items, args.tokens - 128)
        local = rate(TokenDataset(feat), n, 64)
        remote = rate(TokenDataset(f"s3://{BUCKET}/feat"), n, 64)
        figure("read_s3.tokens", remote, "samples/s", "same store on local disk", local, grid="16x16", dim=384)


if __name__ == "__main__":
    main()
