"""launch/train.py streaming shards from a real HTTP server on 127.0.0.1, and shard problems found before any
model loads (subprocess runs, as a user types them)."""

import os
import subprocess
import sys

import pytest
from shard_server import ShardServer
from training_helpers import ROOT, tiny_run

from zsnr.data import SyntheticSet, make_synthetic_shards

ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    make_synthetic_shards(str(folder), SyntheticSet(128, 32, 0, 32))  # shard-000000..000003.tar
    return folder


@pytest.fixture
def server(shard_dir):
    srv = ShardServer(str(shard_dir), stall_s=30.0)
    yield srv
    srv.close()


def launch(run_dir, data_root, extra: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    overrides = [o for o in tiny_run(run_dir, data_root, steps=4) if not o.startswith("data.synthetic")]
    cmd = [sys.executable, "launch/train.py", *overrides, "samples.every_n_steps=0", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_training_streams_http_shards_past_a_stalled_and_a_dropped_one(tmp_path, data_root, server):
    """One good source beside a shard that stalls after 1 KiB and one whose connection drops half-way: the
    run trains its steps (it used to hang), and the log names both failed shards."""
    stalled, dropped = server.url("shard-000000.tar", "stall"), server.url("shard-000001.tar", "drop")
    good = f"{server.base}/ok/shard-{{000000..000003}}.tar"
    urls = f"data.urls=['{good}','{stalled}','{dropped}']"
    knobs = ["data.http_timeout_s=0.5", "data.http_retries=1", "data.http_backoff_s=0.05",
             "data.max_bad_shard_fraction=0.5", "data.epoch_length=64"]  # fmt: skip
    done = launch(tmp_path / "run", data_root, [urls, *knobs])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    log = done.stdout + done.stderr
    assert f"(stalled) in shard {stalled}" in log and f"(connection_dropped) in shard {dropped}" in log
    assert any(path == "/ok/shard-000003.tar" for _, path, _ in server.requests)  # it read over http


def test_a_missing_shard_fails_before_any_model_loads(tmp_path, data_root, shard_dir, server):
    """A missing local shard, or an http one answering 404: an error naming it, no model, no run folder."""
    for name, url, expected in [
        ("local", str(shard_dir / "shard-000009.tar"), "1 of 2 shard(s) not found"),
        ("http", server.url("shard-000001.tar", "missing"), "1 of the first 1 http shard(s) answer 404"),
    ]:
        run_dir = tmp_path / name
        done = launch(run_dir, data_root, [f"data.urls=['{shard_dir / 'shard-000000.tar'}','{url}']"], 120)
        assert done.returncode != 0 and expected in done.stderr and url in done.stderr, done.stderr[-3000:]
        assert "GPU available" not in done.stdout + done.stderr  # Lightning's line when a Trainer is built
        assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()
