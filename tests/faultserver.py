"""A loopback HTTP server that injects faults, for the WebVid ingest and streaming reliability tests.

Files are served from memory. `plan[path]` lists the behaviour of the 1st, 2nd, ... request for that path
(the last entry repeats): "ok", "500", "429" (Retry-After: 0), "404", "truncate" (full Content-Length,
half the body, then close), "stall" (headers and a little body, then silence past the client's timeout).
On top of the plan, every `nth_500`-th request for a faultable path (default every 10th: ~10 %) answers 500.
The server is bounded: after `max_requests` it answers 503, and it shuts itself down after `max_seconds`.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter


class FaultServer:
    def __init__(self, files: dict[str, bytes], plan: dict[str, list[str]] | None = None, *, nth_500: int = 10,
                 faultable: tuple[str, ...] = (".mp4", ".tar"), stall_s: float = 2.5, max_requests: int = 400,
                 max_seconds: float = 60.0) -> None:
        self.files, self.plan = files, plan or {}
        self.nth_500, self.faultable, self.stall_s = nth_500, faultable, stall_s
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.log: list[tuple[str, str]] = []          # (path, behaviour) per request
        self.per_path: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._n_faultable = 0

    def behaviour(self, path: str) -> str:
        with self._lock:
            if len(self.log) >= self.max_requests:
                b = "503"
            else:
                n = self.per_path[path]
                self.per_path[path] += 1
                steps = self.plan.get(path, ["ok"])
                b = steps[min(n, len(steps) - 1)]
                if path.endswith(self.faultable) and b == "ok" and path in self.files:
                    self._n_faultable += 1
                    if self.nth_500 and self._n_faultable % self.nth_500 == 0:
                        b = "500"
                if b == "ok" and path not in self.files:
                    b = "404"
            self.log.append((path, b))
            return b

    def requests_for(self, path: str) -> int:
        return sum(1 for p, _ in self.log if p == path)

    def __enter__(self) -> "FaultServer":
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head: bool = False):
                path = self.path.split("?", 1)[0]
                b = outer.behaviour(path)
                if b in ("500", "503", "404", "429"):
                    body = f"injected {b}".encode()
                    self.send_response(int(b))
                    if b == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                data = outer.files[path]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if head:
                    return
                if b == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if b == "stall":
                    self.wfile.write(data[:1024])
                    self.wfile.flush()
                    time.sleep(outer.stall_s)
                    self.close_connection = True
                    return
                self.wfile.write(data)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that time out and hang up are part of the test

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._timer = threading.Timer(self.max_seconds, self.server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()
