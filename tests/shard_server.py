"""A real HTTP server on 127.0.0.1 for the shard-streaming tests: serves tar files, or one fault per path.

`/<fault>/<name>` serves the file `name` with a fault:
  ok        the file (Range requests answered with 206)
  missing   404
  error     500, always
  flaky     500 for the first `flaky_failures` requests of that path, then the file
  stall     headers and the first 1 KiB, then nothing for `stall_s` (or until the server stops)
  drop      Content-Length of the whole file, half of it, then the connection closes; every time
  droponce  like drop on the first request of that path, then served normally (Range included)
  cut       a tar cut in the middle, with a Content-Length that matches the cut (the file is short)
Every request is recorded as (method, path, Range header). Stop it with close(): stalled handlers wake up,
and handler threads are daemons, so a test never waits for them.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "missing", "error", "flaky", "stall", "drop", "droponce", "cut")


class ShardServer:
    def __init__(self, folder: str, stall_s: float = 5.0, flaky_failures: int = 1):
        self.folder, self.stall_s, self.flaky_failures = folder, stall_s, flaky_failures
        self.requests: list[tuple[str, str, str | None]] = []
        self.hits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server.handle(self, head=True)

            def do_GET(self):
                server.handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str, fault: str = "ok") -> str:
        assert fault in FAULTS, fault
        return f"{self.base}/{fault}/{name}"

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        match = re.fullmatch(r"/([a-z]+)/([^/]+)", h.path)
        fault, name = match.groups() if match else ("missing", "")
        with self.lock:
            self.requests.append((h.command, h.path, h.headers.get("Range")))
            self.hits[h.path] += not head  # faults that happen once count GET requests only
            hit = self.hits[h.path]
        path = os.path.join(self.folder, name)
        if fault == "missing" or not os.path.isfile(path):
            return self.status(h, 404)
        if fault == "error" or (fault == "flaky" and hit <= self.flaky_failures and not head):
            return self.status(h, 500)
        with open(path, "rb") as f:
            data = f.read()
        if fault == "cut":
            data = data[: len(data) // 2]
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        partial = bool(ranged) and fault in ("ok", "droponce", "flaky")
        if partial:
            start = int(ranged.group(1))
        h.send_response(206 if partial else 200)
        h.send_header("Content-Type", "application/x-tar")
        h.send_header("Content-Length", str(len(data) - start))
        if partial:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        body = data[start:]
        if fault == "stall":
            h.wfile.write(body[:1024])
            h.wfile.flush()
            self.stopping.wait(self.stall_s)
            h.close_connection = True
            return
        if fault == "drop" or (fault == "droponce" and hit == 1):
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)

    @staticmethod
    def status(h: BaseHTTPRequestHandler, code: int) -> None:
        body = f"status {code}\n".encode()
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
