"""Samples/s of `TokenDataset` through a DataLoader (2 workers, batch 64, shuffled) against the same arrays
read from a raw `np.memmap` through the same DataLoader, in the same run (issue 3; goal >= 0.8).

Both sides batch with `__getitems__`, use the same workers, batch size, shuffle order and a warm page cache (one
untimed epoch each); alternated `--trials`, medians (`benchmarks/harness.py`). Prints one JSON line:
`read_tokens.dataloader`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_common_args, alternate, figure, median_ratio  # noqa: E402

from shardyard.loaders.tokens import TokenDataset  # noqa: E402
from shardyard.stores.features import FeatureLayout, FeatureWriter, write_batch  # noqa: E402


class MemmapTokens(torch.utils.data.Dataset):
    """Baseline: the same arrays as raw `.npy` memmaps, batched the same way."""

    def __init__(self, patch: Path, cls: Path) -> None:
        self.patch_path, self.cls_path = patch, cls
        self.n = np.load(patch, mmap_mode="r").shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices):
        p = np.load(self.patch_path, mmap_mode="r")
        c = np.load(self.cls_path, mmap_mode="r")
        idx = np.asarray(indices)
        pt, ct = torch.from_numpy(p[idx]), torch.from_numpy(c[idx])
        return [{"index": int(i), "dino.patch_tokens": pt[j], "dino.cls_token": ct[j]} for j, i in enumerate(idx)]


def rate(ds, epochs: int) -> float:
    dl = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2, shuffle=True, persistent_workers=True,
                                     generator=torch.Generator().manual_seed(0))
    for _ in dl:  # warm-up epoch (workers start, page cache)
        pass
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        for b in dl:
            n += b["dino.patch_tokens"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    if args.smoke:
        args.samples, args.epochs, args.trials = 256, 1, 1
    n, p, d = args.samples, args.grid * args.grid, args.dim
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lay = FeatureLayout(num_samples=n, grid=(args.grid, args.grid), embed_dim=d, patch_size=14, batch_size=64)
        rng = np.random.default_rng(0)
        patch = np.lib.format.open_memmap(root / "patch.npy", mode="w+", dtype=np.float16, shape=(n, p, d))
        cls = np.lib.format.open_memmap(root / "cls.npy", mode="w+", dtype=np.float16, shape=(n, d))
        with FeatureWriter(root / "feat", key={"bench": 1}, layout=lay):
            for a, b in lay.batches():
                x = rng.standard_normal((b - a, p, d), dtype=np.float32)
                patch[a:b], cls[a:b] = x, x[:, 0]
                write_batch(root / "feat", a, x, x[:, 0], np.zeros(b - a, bool))
        patch.flush()
        cls.flush()
        del patch, cls
        r = alternate({"memmap": lambda: rate(MemmapTokens(root / "patch.npy", root / "cls.npy"), args.epochs),
                       "tokens": lambda: rate(TokenDataset(root / "feat"), args.epochs)}, args.trials)
    figure("read_tokens.dataloader", statistics.median(r["tokens"]), "samples/s",
           f"np.memmap ({n}x{p}x{d} float16), same loader", statistics.median(r["memmap"]),
           ratio=median_ratio(r["tokens"], r["memmap"]), goal=">= 0.8",
           label=f"`TokenDataset`, {n:,} samples x {args.epochs} epochs, DataLoader 2 workers, batch 64, shuffled")


if __name__ == "__main__":
    main()
