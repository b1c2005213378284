"""Shards streamed over http from a real server on 127.0.0.1: same batches as local files, every fault counted
per shard and kind, a stall never hangs, too many failed shards stop the run naming them, exact resume."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter

import pytest
from shard_factory import read_keys_and_meta
from shard_server import ShardServer
from test_data_resume import run, same

from zsnr.data import BadDataError, ShardStream, WebDataModule, parse_sources
from zsnr.data.http_shards import HttpOptions

FAST = HttpOptions(timeout_s=0.5, retries=1, backoff_s=0.01)  # a stall costs 2 x 0.5 s
FAST_KWARGS = {"http_timeout_s": 0.5, "http_retries": 1, "http_backoff_s": 0.01}


@pytest.fixture
def server(six_shards):
    srv = ShardServer(os.path.dirname(six_shards.paths[0]), stall_s=10.0)
    yield srv
    srv.close()


def names(shard_set) -> list[str]:
    return [os.path.basename(p) for p in shard_set.paths]


def within(seconds: float, fn):
    """fn() in a daemon thread; fails the test if it has not returned after `seconds` (a hang, not slowness)."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exn:  # handed back to the test
            out["error"] = exn

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: the stream hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


def summed(batches: list[dict]) -> Counter:
    return sum((Counter(b["stats"]) for b in batches), Counter())


def test_http_shards_give_the_batches_of_local_files_through_transient_faults(server, six_shards):
    """Brace pattern, two workers; one shard's connection drops half-way once, another answers 500 once:
    both are retried (the drop resumes with a Range request) and the batches equal the local run's."""
    files = names(six_shards)
    pattern = f"{server.base}/ok/shard-{{000000..000003}}.tar"
    urls = [pattern, server.url(files[4], "droponce"), server.url(files[5], "flaky")]
    kwargs = {"resolution": 24, "batch_size": 8, "shuffle_buffer": 16, "seed": 3, "num_workers": 2}
    local, _ = run({**kwargs, "urls": six_shards.paths}, epochs=1)
    remote, _ = run({**kwargs, "urls": urls, **FAST_KWARGS}, epochs=1)  # bounded: 0.5 s timeouts, 1 retry
    assert same(remote, local) and {k for b in remote for k in b["key"]} == six_shards.accepted
    stats = summed(remote)
    assert not {k: v for k, v in stats.items() if k.startswith("bad/") and v}  # recovered: nothing lost
    ranges = [r for m, path, r in server.requests if m == "GET" and path.startswith("/droponce/")]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


def test_each_http_fault_is_counted_per_shard_and_kind_and_a_stall_never_hangs(server, six_shards, caplog):
    files = names(six_shards)
    faults = {"ok": files[0], "missing": files[1], "error": files[2], "stall": files[3], "drop": files[4]}
    faults["cut"] = files[5]
    urls = [server.url(name, fault) for fault, name in faults.items()]
    dataset = ShardStream(parse_sources(urls), batch_size=4, resolution=16, max_bad_fraction=1.0,
                          max_bad_shard_fraction=1.0, http=FAST)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="zsnr.data"):
        batches = within(60, lambda: list(dataset))
    stats = summed(batches)
    bad = {k: v for k, v in stats.items() if k.startswith("bad/") and v}
    assert bad == {
        f"bad/{k}": 1 for k in ("http_404", "http_5xx", "stalled", "connection_dropped", "truncated_tar")
    }
    keys = {k for b in batches for k in b["key"]}
    accepted = [[k for k, _ in read_keys_and_meta(p) if k in six_shards.accepted] for p in six_shards.paths]
    assert set(accepted[0]) <= keys and not keys & set(
        accepted[1] + accepted[2]
    )  # ok shard whole, 404/500 none
    for i in (4, 5):  # dropped, cut: the samples before the break are kept, the rest are not
        assert 0 < len(keys & set(accepted[i])) < len(accepted[i])
    for fault, kind in [("missing", "http_404"), ("error", "http_5xx"), ("stall", "stalled"),
                        ("drop", "connection_dropped"), ("cut", "truncated_tar")]:  # fmt: skip
        url = server.url(faults[fault], fault)
        assert any(kind in r.getMessage() and url in r.getMessage() for r in caplog.records), (fault, kind)
    gets = Counter(path for method, path, _ in server.requests if method == "GET")
    assert gets[f"/missing/{faults['missing']}"] == 1  # a 404 is not retried
    assert gets[f"/error/{faults['error']}"] == gets[f"/stall/{faults['stall']}"] == 2  # retried once
    assert gets[f"/cut/{faults['cut']}"] == 1  # the server sent all it has: the file is short, not retried


def test_too_many_failed_shards_stop_the_stream_naming_them(server, six_shards):
    """Exact passes back to back over six shards: one of six failing holds under a 0.25 limit, three do not."""
    files = names(six_shards)

    def stream(bad: list[int], limit: float, epochs: int):
        urls = [server.url(f, "missing" if i in bad else "ok") for i, f in enumerate(files)]
        dm = WebDataModule(urls=urls, resolution=16, batch_size=8, num_workers=0, epoch_length=64,
                           max_bad_fraction=1.0, max_bad_shard_fraction=limit, http_preflight=0)  # fmt: skip
        loader = dm.train_dataloader()
        return [b for _ in range(epochs) for b in loader], dm

    batches, dm = within(120, lambda: stream([2], 0.25, epochs=12))
    assert len(batches) == 12 * 8 and dm.stats["bad/http_404"] >= 4  # over 20 shards read, 1 in 6 failed
    with pytest.raises(BadDataError) as info:
        within(120, lambda: stream([1, 3, 5], 0.25, epochs=10))
    message = str(info.value)
    # counted over the epochs (each epoch's workers read 8 shards), every failure a 404
    assert re.search(r"(\d+) of (2\d) shards failed on this rank .*http_404: \1\)", message)
    assert "data.max_bad_shard_fraction=0.25" in message
    for i in (1, 3, 5):
        assert server.url(files[i], "missing") in message
    assert server.url(files[0], "ok") not in message


def test_a_finite_pass_judges_the_failed_shards_at_its_end(server, six_shards):
    """Five of six shards 404 (fewer shards than the minimum): the pass ends, then the run stops."""
    files = names(six_shards)
    urls = [server.url(f, "ok" if i == 0 else "missing") for i, f in enumerate(files)]
    dataset = ShardStream(parse_sources(urls), batch_size=8, resolution=16, max_bad_fraction=1.0, http=FAST)
    with pytest.raises(BadDataError, match=r"5 of 6 shards failed .*http_404: 5"):
        within(60, lambda: list(dataset))


def test_preflight_reports_404_shards_before_training(server, six_shards):
    files = names(six_shards)
    urls = [server.url(files[0]), server.url(files[1], "missing"), server.url(files[2])]
    with pytest.raises(FileNotFoundError, match=r"1 of the first 3 http shard\(s\) answer 404") as info:
        WebDataModule(urls=urls, resolution=16, **FAST_KWARGS)
    assert server.url(files[1], "missing") in str(info.value)
    assert all(method == "HEAD" for method, _, _ in server.requests)  # nothing was read yet
    WebDataModule(urls=urls, resolution=16, http_preflight=0)  # off: the stream counts it instead
    WebDataModule(urls=urls, resolution=16, http_preflight=1)  # only the first URL is asked


@pytest.mark.parametrize(
    ("extra", "cuts"), [({"num_workers": 2, "epoch_length": 64}, [3, 8, 11]), ({"num_workers": 0}, [4])]
)
def test_resume_over_http_continues_exactly(server, six_shards, extra, cuts):
    """A state taken while streaming over http resumes mid-shard (re-reading the shard from its start) to the
    batches of an uninterrupted local run; one shard's connection drops half-way on its first request."""
    files = names(six_shards)
    urls = [server.url(f, "droponce" if i == 2 else "ok") for i, f in enumerate(files)]
    kwargs = {"resolution": 24, "batch_size": 8, "shuffle_buffer": 16, "seed": 3, **extra}
    full, _ = run({**kwargs, "urls": six_shards.paths}, epochs=2)
    remote = {**kwargs, "urls": urls, **FAST_KWARGS}
    for k in cuts:
        head, state = run(remote, epochs=2, stop_after=k)  # bounded: 0.5 s timeouts, 1 retry
        epochs_left = 2 - state["ranks"][0]["position"]["epoch"]
        tail, _ = run(remote, epochs=epochs_left, state=state)
        assert same(head + tail, full), k
