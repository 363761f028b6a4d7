"""Loader throughput from `s3://`, `gs://` and `hf://` against the same store on local disk, same DataLoader
settings, in the same run (issue 14 item 2 for S3, issue 23 for GCS and the Hugging Face Hub).

Servers, all on 127.0.0.1 in this process: moto's S3 app (`s3://`), `gcp-storage-emulator` in memory
(`gs://`), and the Hub double of `tests/hubserver.py` (`hf://`, the real `huggingface_hub` client's
`HfFileSystem` against it). The Hub double is imported from `tests/` by path: it is a test double of about
700 lines, not library code (shipping it in `shardyard/` would put a fake server into every install and break
the package's module-size rule), and benchmarks run from a checkout, as the tests do. Each store is pushed with
`shardyard.stores.remote.push` (to the Hub: a few batched commits).

Figures (JSON lines), each with the local copy as the baseline, a median of `--trials` alternated trials
(local, s3, gs, hf, local, ...; the ratio is the median of the per-trial ratios):
`read_remote.frames_<s3|gs|hf>`: random single frames of an episodic store (samples/s);
`read_remote.tokens_<s3|gs|hf>`: `TokenDataset`, shuffled batches of 64 (samples/s).
Same loader for every side: 2 forked workers (each opens its own filesystem), shuffled, a warm-up batch per
worker not timed. Every read is one HTTP round trip to a single Python server process (moto also hashes the
object on every GET), so the ratios bound what a real service with parallel connections gives from below:
they say what the loaders' ranged reads cost against `pread`. `--smoke` runs tiny inputs, one trial.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # read at gcsfs import: no gRPC probe

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))  # hubserver: the Hub double (see the docstring)
from harness import add_common_args, alternate, figure, median_ratio  # noqa: E402
from hubserver import running_hub  # noqa: E402

from shardyard import open_store  # noqa: E402
from shardyard.ingest.runner import IngestConfig, run_ingest  # noqa: E402
from shardyard.ingest.yam import YamConfig, YamSource  # noqa: E402
from shardyard.loaders.tokens import TokenDataset  # noqa: E402
from shardyard.stores.features import FeatureLayout, FeatureWriter, write_batch  # noqa: E402
from shardyard.stores.remote import push  # noqa: E402
from shardyard.testing import SyntheticConfig, write_synthetic_yam  # noqa: E402

BUCKET = "shardyard-bench"
REMOTES = ("s3", "gs", "hf")


def start_s3() -> None:
    """The moto S3 app on 127.0.0.1 (threaded werkzeug), a bucket made; fsspec's s3 config points at it."""
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fsspec.config.conf["s3"] = {"endpoint_url": f"http://127.0.0.1:{server.server_port}", "key": "bench",
                                "secret": "bench"}
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)


def start_gcs(stack: contextlib.ExitStack) -> None:
    """gcp-storage-emulator in memory on 127.0.0.1 with a bucket; fsspec's gs config points at it."""
    from gcp_storage_emulator.server import create_server

    # a missing key (zarr probing for v2 metadata) is an expected 404, which the emulator logs as an error
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    stack.callback(server.stop)
    fsspec.config.conf["gs"] = {"endpoint_url": f"http://127.0.0.1:{port}", "token": "anon",
                                "project": "shardyard-bench"}


def start_hub(stack: contextlib.ExitStack, root: Path) -> None:
    """The Hub double on 127.0.0.1 (this process's client may reach it, nothing else); fsspec's hf config
    points at it."""
    hub = stack.enter_context(running_hub(root))
    fsspec.config.conf["hf"] = {"endpoint": hub.endpoint, "token": False}


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
    """An episodic store of synthetic YAM demos (`size`x`size` frames) and a feature store of `tokens` rows
    of 16x16 patch tokens, 384 dims."""
    write_synthetic_yam(root / "raw", SyntheticConfig(num_episodes=episodes, steps=steps, width=size, height=size))
    run_ingest(YamSource(YamConfig(root=root / "raw")), IngestConfig(out=root / "yam"))
    lay = FeatureLayout(num_samples=tokens, grid=(16, 16), embed_dim=384, patch_size=14, batch_size=64)
    rng = np.random.default_rng(0)
    with FeatureWriter(root / "feat", key={"bench": 1}, layout=lay):
        for a, b in lay.batches():
            x = rng.standard_normal((b - a, 256, 384), dtype=np.float32)
            write_batch(root / "feat", a, x, x[:, 0], np.zeros(b - a, bool))
    return root / "yam", root / "feat"


def url_of(proto: str, name: str) -> str:
    return f"hf://datasets/bench/{name}" if proto == "hf" else f"{proto}://{BUCKET}/{name}"


def report(kind: str, results: dict[str, list[float]], unit: str, label: str, **extra) -> None:
    """One figure per remote: its median against the local median of the same trials (`label` names the
    sizes; a single trial says so)."""
    base = statistics.median(results["local"])
    for proto in results:
        if proto != "local":
            trials = len(results[proto])
            figure(f"read_remote.{kind}_{proto}", statistics.median(results[proto]), unit,
                   "same store on local disk", base, ratio=median_ratio(results[proto], results["local"]),
                   label=f"{label}, from {proto}://" + (" (one trial)" if trials == 1 else ""), trials=trials,
                   **extra)


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=224, help="frame side, px")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--items", type=int, default=512, help="samples timed per side and trial")
    ap.add_argument("--only", default=",".join(REMOTES), help="remotes to measure, comma separated")
    args = ap.parse_args()
    if args.smoke:
        args.episodes, args.steps, args.size, args.tokens, args.items, args.trials = 2, 20, 32, 320, 32, 1
    remotes = [p for p in args.only.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        starts = {"s3": lambda: start_s3(), "gs": lambda: start_gcs(stack),
                  "hf": lambda: start_hub(stack, Path(tmp) / "hub")}
        for proto in remotes:
            starts[proto]()
        yam, feat = build(Path(tmp), args.episodes, args.steps, args.size, args.tokens)
        for proto in remotes:
            push(yam, url_of(proto, "yam"))
            push(feat, url_of(proto, "feat"))
        n = min(args.items, open_store(str(yam)).num_steps - 32)
        sides = {"local": lambda: rate(Frames(str(yam), "obs.rgb.front"), n, 16)}
        sides |= {p: (lambda p=p: rate(Frames(url_of(p, "yam"), "obs.rgb.front"), n, 16)) for p in remotes}
        report("frames", alternate(sides, args.trials), "frames/s",
               f"{n:,} random frames of {args.episodes} episodes ({args.size}x{args.size}), DataLoader 2 workers",
               frame=f"{args.size}x{args.size}x3")
        n = min(args.items, args.tokens - 128)
        sides = {"local": lambda: rate(TokenDataset(feat), n, 64)}
        sides |= {p: (lambda p=p: rate(TokenDataset(url_of(p, "feat")), n, 64)) for p in remotes}
        report("tokens", alternate(sides, args.trials), "samples/s",
               f"{n:,} samples of {args.tokens:,} (16x16x384 tokens), `TokenDataset` batches of 64, 2 workers",
               grid="16x16", dim=384)


if __name__ == "__main__":
    main()
