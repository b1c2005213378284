"""Shards over http(s): a read timeout on every socket read, retries with backoff, and a failure kind per shard.

webdataset opens http URLs with curl in a pipe, which has a connect timeout but none for a transfer that
stalls, so one stalled shard hangs a DataLoader worker (and the run) for good. HttpShard is a file object over
one shard's body: a server that sends nothing for `timeout_s` counts as stalled; transient failures (stalls,
connections refused or dropped, 5xx, 408 and 429) are retried after backoff_s, 2 backoff_s, 4 backoff_s, ...,
re-requesting the rest of the body with a Range header (or skipping what was already read when the server
ignores Range); 404 / 410 and other client errors are not retried. When the retries are spent, the read
raises ShardFailure carrying the kind (a bad/<kind> counter, zsnr.data.stats), and read_shard reports the
shard as failed, keeping the samples read before.
"""

from __future__ import annotations

import http.client
import io
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger("zsnr.data")

HTTP_SCHEMES = ("http://", "https://")
NOT_FOUND = (404, 410)
RETRIED_CLIENT_ERRORS = (408, 429)  # request timeout, too many requests: the server asks to try again
MAX_BACKOFF_S = 60.0
HTTP_KINDS = (
    "http_404",  # 404 or 410: the shard is not there (not retried)
    "http_4xx",  # another client error, e.g. 403 (not retried, except 408 / 429)
    "http_5xx",  # a server error, retried
    "connection_failed",  # could not connect (refused, unknown host), retried
    "connection_dropped",  # the connection closed before the whole body came, retried from where it broke
    "stalled",  # nothing arrived for data.http_timeout_s, retried
)


@dataclass(frozen=True)
class HttpOptions:
    """timeout_s: the longest wait for any one read; retries: failed attempts re-tried per shard."""

    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0

    def __post_init__(self):
        if not self.timeout_s > 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError(
                f"http options need timeout_s > 0, retries >= 0 and backoff_s >= 0; got {self}. "
                "Set data.http_timeout_s, data.http_retries and data.http_backoff_s accordingly."
            )


class ShardFailure(OSError):
    """A shard could not be read (to its end); `kind` is its bad/<kind> counter name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def is_http(url: str) -> bool:
    return url.startswith(HTTP_SCHEMES)


def status_kind(code: int) -> str:
    return "http_404" if code in NOT_FOUND else "http_5xx" if code >= 500 else "http_4xx"


def error_kind(exn: BaseException) -> str:
    """The failure kind of an exception raised while connecting to or reading from a server."""
    if isinstance(exn, urllib.error.HTTPError):
        return status_kind(exn.code)
    if isinstance(exn, urllib.error.URLError):
        return "stalled" if isinstance(exn.reason, TimeoutError) else "connection_failed"
    if isinstance(exn, TimeoutError):
        return "stalled"
    return "connection_dropped"  # IncompleteRead, RemoteDisconnected, ConnectionResetError, ...


class HttpShard(io.RawIOBase):
    """The body of one http(s) shard as a read-only stream that survives stalls and drops (see module doc)."""

    def __init__(self, url: str, options: HttpOptions):
        super().__init__()
        self.url, self.options = url, options
        self.position = 0  # bytes handed to the reader
        self.length: int | None = None  # the whole body's size, when the server says it
        self.failures: list[str] = []
        self.response: http.client.HTTPResponse | None = None
        self.discard = 0  # bytes of the current response the reader already has (server ignored Range)
        self._connect()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self.response is None:
                self._connect()
            try:
                while self.discard:
                    skipped = self.response.read(min(self.discard, 1 << 16))
                    if not skipped:
                        raise http.client.IncompleteRead(b"", self.discard)
                    self.discard -= len(skipped)
                n = self.response.readinto(buffer)
            except (OSError, http.client.HTTPException) as exn:
                self._failed(error_kind(exn), f"reading at byte {self.position}: {exn!r}")
                continue
            if n == 0 and self.length is not None and self.position < self.length:
                self._failed("connection_dropped", f"body ended at byte {self.position} of {self.length}")
                continue
            self.position += n
            return n

    def close(self) -> None:
        self._drop_response()
        super().close()

    def _connect(self) -> None:
        while True:
            headers = {"Range": f"bytes={self.position}-"} if self.position else {}
            request = urllib.request.Request(self.url, headers=headers)
            try:
                response = urllib.request.urlopen(request, timeout=self.options.timeout_s)
            except urllib.error.HTTPError as exn:
                exn.close()
                kind, detail = status_kind(exn.code), f"HTTP {exn.code} {exn.reason}"
                if exn.code < 500 and exn.code not in RETRIED_CLIENT_ERRORS:
                    raise ShardFailure(kind, f"{detail} (not retried)") from None
                self._failed(kind, detail)
                continue
            except (OSError, http.client.HTTPException) as exn:
                self._failed(error_kind(exn), f"connecting: {exn!r}")
                continue
            break
        self.response, self.discard = response, 0
        ranged = re.match(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if response.status == 206 and ranged and int(ranged.group(1)) == self.position:
            self.length = int(ranged.group(2))
        else:  # a full body: skip what was already handed out
            self.discard = self.position
            size = response.headers.get("Content-Length")
            self.length = int(size) if size and size.isdigit() else None

    def _failed(self, kind: str, detail: str) -> None:
        """Count a failed attempt; wait and return to retry, or raise ShardFailure when the retries are spent."""
        self._drop_response()
        self.failures.append(kind)
        if len(self.failures) > self.options.retries:
            raise ShardFailure(
                kind,
                f"{detail}; gave up after {len(self.failures)} attempts ({', '.join(self.failures)}) with "
                f"data.http_retries={self.options.retries}, data.http_timeout_s={self.options.timeout_s}",
            )
        delay = min(self.options.backoff_s * 2 ** (len(self.failures) - 1), MAX_BACKOFF_S)
        log.info("shard %s: %s (%s); retrying in %.2f s", self.url, kind, detail, delay)
        time.sleep(delay)

    def _drop_response(self) -> None:
        if self.response is not None:
            try:
                self.response.close()
            except OSError:
                pass
            self.response = None


def missing_http_shards(urls: Sequence[str], timeout_s: float) -> tuple[list[str], list[str]]:
    """HEAD each URL (in parallel, no retries): (URLs answering 404 / 410, "url: reason" for unreachable ones).

    Other answers, 403 and 405 included (some object stores refuse HEAD on GET-signed URLs), count as present.
    """

    def head(url: str) -> tuple[str, str | None]:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
                return url, None
        except urllib.error.HTTPError as exn:
            exn.close()
            return url, "missing" if exn.code in NOT_FOUND else None
        except (OSError, http.client.HTTPException) as exn:
            return url, f"{error_kind(exn)}: {exn!r}"

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(urls)))) as pool:
        answers = list(pool.map(head, urls))
    missing = [url for url, why in answers if why == "missing"]
    unreachable = [f"{url}: {why}" for url, why in answers if why not in (None, "missing")]
    return missing, unreachable
