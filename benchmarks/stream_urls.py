"""Training straight from a URL list: clips/s of `UrlClipStream` over the URLs against `ClipStream` over the
shard store `ingest webvid` makes of the same URLs, with and without network latency; time to first batch
against the number of metadata rows; the data-wait share of `train foveated-caption --urls`.

Data: `--clips` (1000) rows of real clips, H.264 MP4 re-encodes (256x192, 24 fps) of windows of the shared
WebVid videos and the G1 camera frames, 24, 48 or 96 frames long (`DISTINCT` of them, cycled over the rows),
served by a loopback threaded HTTP server
(stdlib; optional per-response delay and bandwidth cap). 10 % of the URLs are faulty, in equal shares: 404,
500 on every other request (then the retry succeeds), a stall past the client's timeout, a body cut short
(Content-Length kept), a JPEG served as video. Both sides: T 16 frames at 128x128, `--workers` (2)
DataLoader workers, batch 4, one epoch per trial, same fetch settings (timeout 1 s, 1 retry). An epoch is
several times longer than one stalled row's two timeouts, so that the figure is a rate rather than the wait
for the last stall: the shard store serves 200 rows in about 1 s here, less than one stalled row costs.

- `clips`: clips/s over the URLs / over the shard store (goal >= 0.8), with the stream's defaults (8 in
  flight, downloads started up to 512 rows and decodes up to 64 rows ahead per worker: a row that times out
  holds its worker's turn, the order being fixed, so its download must start early); `clips_ahead`: the same
  with 128 rows decoded ahead; both with the CPU ms per
  clip of each side (the server's included: it runs in this process). `clips_latency`: 128 ahead, with 50 ms
  per response and 20 MB/s per response; `in_flight`: the fewest downloads in flight per worker (of 1, 2, 4,
  8, 16) whose rate under that latency (128 ahead) is within 10 % of the rate without it (ratio: that rate
  / the rate without latency).
- `first_batch`: seconds from opening the stream to the first batch with 10^7 metadata rows (parquet,
  row groups of 64 Ki rows; the healthy URLs repeated) / with 10^3 rows (goal <= 1.5: flat in the rows).
- `data_wait`: the trainer's data-wait share with `--urls`, `--workers` workers, beside the same run on the
  shard store (tiny models, T 8 at 64 px, second half of `--steps`).

Sides alternate over `--trials` (`harness.alternate`; medians, ratios of the same trial). `--smoke`: 20
clips, 10^3 vs 10^4 rows, a few steps, one trial.

    .venv/bin/python benchmarks/stream_urls.py [--clips 1000] [--workers 2] [--trials 3] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import http.server
import io
import logging
import resource
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHARED, add_common_args, alternate, figure, g1_frames, median_ratio  # noqa: E402

T, SIZE, BATCH, W, H = 16, 128, 4, 256, 192
FAULTS = ("404", "flaky", "stall", "truncate", "jpeg")
DISTINCT = 200  # clips encoded; the rows past them reuse their bodies (each row its own URL)


class ClipServer:
    """Threaded loopback server of `files` (path -> bytes) with a behaviour per path (`plan`: "ok" or one
    of FAULTS), a delay per response (`delay_s`) and a bandwidth cap per response (`rate`, bytes/s)."""

    def __init__(self, files: dict[str, bytes], plan: dict[str, str], stall_s: float = 3.0) -> None:
        self.files, self.plan, self.stall_s = files, plan, stall_s
        self.delay_s, self.rate = 0.0, None
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def _send(self, h: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        if self.rate is None:
            h.wfile.write(data)
            return
        t0, chunk = time.perf_counter(), 1 << 16
        for i in range(0, len(data), chunk):
            h.wfile.write(data[i:i + chunk])
            ahead = (i + chunk) / self.rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """Answer one GET per the path's behaviour."""
        path = h.path.split("?", 1)[0]
        with self.lock:
            n = self.counts[path] = self.counts.get(path, 0) + 1
        b, data = self.plan.get(path, "ok"), self.files.get(path)
        time.sleep(self.delay_s)
        if data is None or b == "404" or (b == "flaky" and n % 2 == 1):
            body = b"not found" if data is None or b == "404" else b"busy"
            h.send_response(404 if body == b"not found" else 500)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if b == "stall":
            h.wfile.write(data[:1024])
            h.wfile.flush()
            time.sleep(self.stall_s)
            h.close_connection = True
        elif b == "truncate":
            self._send(h, data[: len(data) // 2])
            h.close_connection = True
        else:
            self._send(h, data)

    def __enter__(self) -> "ClipServer":
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, as a CDN sends them

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.handle(self)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients that time out and hang up are part of the benchmark

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def encode(frames: np.ndarray, fps: int = 24) -> bytes:
    """`(N, H, W, 3) uint8` frames as H.264 MP4 bytes (CRF 23, like WebVid's previews)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt, s.options = frames.shape[2], frames.shape[1], "yuv420p", {
            "crf": "23", "preset": "veryfast"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def make_clips(n: int) -> list[bytes]:
    """`n` clips: windows of the shared WebVid videos and the G1 frames at 256x192, 24/48/96 frames long, the
    first `DISTINCT` encoded and cycled over the rest."""
    from shardyard.video import open_video

    pools = [g1_frames(size=(W, H))]
    for p in sorted((SHARED / "webvid" / "clips").glob("*.mp4")):
        r = open_video(p)
        pools.append(r.read(range(r.num_frames), size=(W, H)))
        r.close()
    pools = [p for p in pools if len(p) >= 96] + [np.concatenate([p for p in pools if len(p) < 96] or [pools[0]])]
    out: list[bytes] = []
    for i in range(n):
        if i >= DISTINCT:
            out.append(out[i % DISTINCT])
            continue
        pool, length = pools[i % len(pools)], (24, 48, 96)[i % 3]
        start = (i * 37) % (len(pool) - length)
        out.append(encode(pool[start:start + length]))
    return out


def serve_files(clips: list[bytes]) -> tuple[dict[str, bytes], dict[str, str]]:
    """URL paths of the clips, and a fault on every 10th (the kinds in turn)."""
    import tarfile

    with tarfile.open(SHARED / "webvid" / "video2dataset_shard" / "return_all_test.tar") as t:
        jpeg = t.extractfile("000000014.mp4").read()
    files, plan = {}, {}
    for i, data in enumerate(clips):
        path = f"/v/{i}.mp4"
        fault = FAULTS[(i // 10) % len(FAULTS)] if i % 10 == 9 else "ok"
        files[path], plan[path] = (jpeg if fault == "jpeg" else data), ("ok" if fault == "jpeg" else fault)
    return files, plan


def write_csv(path: Path, base: str, paths: list[str]) -> Path:
    """A WebVid 10M-order CSV of `paths` on `base`."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        for i, p in enumerate(paths):
            w.writerow([i, f"{base}{p}", "PT00H00M02S", "bench", f"clip {i} of the benchmark"])
    return path


def write_parquet(path: Path, base: str, paths: list[str], rows: int) -> Path:
    """`rows` metadata rows cycling over `paths`, in row groups of 64 Ki rows, written in 1 Mi-row batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = pa.array([f"{base}{p}" for p in paths])
    with pq.ParquetWriter(path, pa.schema([("videoid", pa.int64()), ("contentUrl", pa.string()),
                                           ("name", pa.string())])) as w:
        for start in range(0, rows, 1 << 20):
            idx = np.arange(start, min(start + (1 << 20), rows))
            w.write_table(pa.table({"videoid": idx, "contentUrl": urls.take(pa.array(idx % len(paths))),
                                    "name": pa.array(["a clip of the benchmark"] * len(idx))}),
                          row_group_size=1 << 16)
    return path


def cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the DataLoader workers of finished epochs)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def epoch_rate(stream, workers: int, cpu: list[float] | None = None) -> float:
    """Clips/s of one epoch of `stream` through a DataLoader (worker start-up included); appends the CPU
    seconds per clip to `cpu` (the server's share included: it runs in this process)."""
    from torch.utils.data import DataLoader

    t0, c0 = time.perf_counter(), cpu_s()
    n = sum(len(b["key"]) for b in DataLoader(stream, batch_size=BATCH, num_workers=workers))
    if cpu is not None:
        cpu.append((cpu_s() - c0) / max(n, 1))
    return n / (time.perf_counter() - t0)


def first_batch_s(meta: Path, cfg, workers: int) -> float:
    """Seconds from opening a URL stream over `meta` to its first batch."""
    from torch.utils.data import DataLoader

    from shardyard.loaders.url_stream import UrlClipStream

    t0 = time.perf_counter()
    next(iter(DataLoader(UrlClipStream(meta, cfg), batch_size=BATCH, num_workers=workers)))
    return time.perf_counter() - t0


def data_wait(root: Path, args, urls: Path | None, store: Path | None, i: int) -> float:
    """The trainer's data-wait share over the second half of `--steps` (tiny models, T 8 at 64 px)."""
    from shardyard.train.foveated_caption import FoveatedTrainConfig, train

    cfg = FoveatedTrainConfig(out=str(root / f"run_{'urls' if urls else 'store'}_{i}"), urls=urls and str(urls),
                              shards=store and str(store), frames=8, size=64, image_size=56, steps=args.steps,
                              batch_size=2, num_workers=args.workers, log_every=args.steps // 2, ckpt_every=10**6,
                              sample_every=0, resume=False, device="cpu", allow_private_urls=True,
                              fetch={"timeout_s": 1.0, "retries": 1, "backoff_s": 0.05})
    return train(cfg).records[-1]["data_wait_frac"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints JSON figure lines."""
    ap = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    big = 10**7
    if args.smoke:
        args.clips, args.trials, args.steps, big = 20, 1, 4, 10**4
    logging.basicConfig(level=logging.ERROR)
    from shardyard.ingest.fetch import FetchConfig
    from shardyard.ingest.webvid import WebvidConfig, ingest_webvid
    from shardyard.loaders.streaming import ClipStream, StreamConfig
    from shardyard.loaders.url_stream import UrlClipStream, UrlStreamConfig

    fetch = FetchConfig(timeout_s=1.0, retries=1, backoff_s=0.05, allow_private_urls=True)
    files, plan = serve_files(make_clips(args.clips))
    with tempfile.TemporaryDirectory(prefix="bench_urls_") as tmp, ClipServer(files, plan) as srv:
        root = Path(tmp)
        meta = write_csv(root / "meta.csv", srv.url, list(files))
        store = root / "store"
        ingest_webvid(meta, WebvidConfig(out=store, samples_per_shard=25, fetch=fetch))
        url_cfg = lambda k=8, ahead=64: UrlStreamConfig(num_frames=T, size=SIZE, block_rows=25, in_flight=k,  # noqa: E731
                                                        ahead=ahead, fetch=fetch)
        store_stream = ClipStream(store, config=StreamConfig(num_frames=T, size=SIZE, shuffle_buffer=8))
        epoch_rate(store_stream, args.workers)                  # warm the page cache
        cpu: dict[str, list[float]] = {"urls": [], "ahead": [], "store": []}
        store_rate = lambda: epoch_rate(store_stream, args.workers, cpu["store"])  # noqa: E731
        r = alternate({"urls": lambda: epoch_rate(UrlClipStream(meta, url_cfg()), args.workers, cpu["urls"]),
                       "ahead": lambda: epoch_rate(UrlClipStream(meta, url_cfg(ahead=128)), args.workers, cpu["ahead"]),
                       "store": store_rate}, args.trials)
        label = f"T {T} at {SIZE} px, {args.workers} workers, batch {BATCH}, {args.clips} clips (10 % faulty)"
        ms = {k: round(1000 * statistics.median(v), 2) for k, v in cpu.items()}
        figure("stream_urls.clips", statistics.median(r["urls"]), "clips/s", "shard store of the same URLs",
               statistics.median(r["store"]), ratio=median_ratio(r["urls"], r["store"]), goal=">= 0.8",
               label=f"`UrlClipStream` over loopback URLs, {label}", trials=args.trials, workers=args.workers,
               cpu_ms_per_clip=ms["urls"], store_cpu_ms_per_clip=ms["store"])
        figure("stream_urls.clips_ahead", statistics.median(r["ahead"]), "clips/s", "shard store of the same URLs",
               statistics.median(r["store"]), ratio=median_ratio(r["ahead"], r["store"]), goal=">= 0.8",
               label=f"the same {args.clips} clips with 128 decoded ahead per worker",
               trials=args.trials, cpu_ms_per_clip=ms["ahead"], store_cpu_ms_per_clip=ms["store"])
        srv.delay_s, srv.rate = 0.05, 20e6
        lat = alternate({"urls": lambda: epoch_rate(UrlClipStream(meta, url_cfg(ahead=128)), args.workers),
                         "store": store_rate}, args.trials)
        figure("stream_urls.clips_latency", statistics.median(lat["urls"]), "clips/s", "shard store (local)",
               statistics.median(lat["store"]), ratio=median_ratio(lat["urls"], lat["store"]),
               label=f"{args.clips} clips at 50 ms and 20 MB/s per response, 8 in flight, 128 ahead per worker",
               trials=args.trials)
        no_delay = statistics.median(r["ahead"])
        rates = {k: epoch_rate(UrlClipStream(meta, url_cfg(k, 128)), args.workers) for k in (1, 2, 4, 8, 16)}
        need = next((k for k, v in rates.items() if v >= 0.9 * no_delay), 16)
        figure("stream_urls.in_flight", need, "downloads in flight per worker", "clips/s without latency",
               no_delay,
               ratio=rates[need] / no_delay, goal="rate within 10 %",
               label=f"fewest in flight hiding 50 ms + 20 MB/s per response, {args.clips} clips, 128 ahead "
               "(single run)", trials=1,
               rates={str(k): round(v, 2) for k, v in rates.items()})
        srv.delay_s, srv.rate = 0.0, None
        healthy = [p for p in files if plan[p] == "ok" and not files[p].startswith(b"\xff\xd8")]
        small = write_parquet(root / "small.parquet", srv.url, healthy, 1000)
        large = write_parquet(root / "large.parquet", srv.url, healthy, big)
        ttfb = alternate({"large": lambda: first_batch_s(large, url_cfg(), args.workers),
                          "small": lambda: first_batch_s(small, url_cfg(), args.workers)}, args.trials)
        figure("stream_urls.first_batch", statistics.median(ttfb["large"]), "s", "1,000 rows",
               statistics.median(ttfb["small"]), ratio=median_ratio(ttfb["large"], ttfb["small"]), goal="<= 1.5",
               label=f"time to first batch, 10^{len(str(big)) - 1} metadata rows (parquet)", trials=args.trials)
        waits = alternate({"urls": lambda: data_wait(root, args, meta, None, 0),
                           "store": lambda: data_wait(root, args, None, store, 0)}, args.trials)
        base = [max(x, 1e-9) for x in waits["store"]]
        figure("stream_urls.data_wait", statistics.median(waits["urls"]), "fraction", "shard store",
               statistics.median(waits["store"]), ratio=median_ratio(waits["urls"], base),
               label=f"data-wait share of `train foveated-caption --urls`, {args.steps} steps, {args.workers} workers",
               trials=args.trials, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
