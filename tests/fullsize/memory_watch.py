"""Run a command and follow the memory of its whole process tree (data workers, spawned ranks) 4x a second.

    python tests/fullsize/memory_watch.py --log mem.tsv -- python launch/train.py ...

Per sample: the tree's anonymous memory (the sum of each process's Pss_Anon: pages a forked data worker
still shares with its parent count once, split between them), the main process's RssAnon (what the OOM killer
counts), the number of processes, and the host's MemAvailable. Anonymous memory is what the kernel cannot drop
(no swap here); a file's pages, memory-mapped weights and checkpoints among them, it can. Prints the peaks at the
end; --log keeps the timeline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

GIB = 2**30


def pss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise KeyError("RssAnon")  # a zombie has none


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            todo += _children(p)
        except OSError:
            pass
    return pids


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


class Watch:
    """Samples `pid`'s process tree in a thread until it ends; `peaks` and `timeline` hold what it saw."""

    def __init__(self, pid: int, period_s: float = 0.25) -> None:
        self.pid, self.period_s = pid, period_s
        self.timeline: list[
            tuple[float, int, int, int, int]
        ] = []  # t, tree anon, main anon, processes, avail
        self.peaks: dict[str, Any] = {"tree_anon": 0, "main_anon": 0, "processes": 0, "min_available": None}
        self.start = time.time()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                main = rss_anon(self.pid)
            except (OSError, KeyError):  # ended (a zombie has no RssAnon)
                return
            total, n = 0, 0
            for p in tree(self.pid):
                try:
                    total += pss_anon(p)
                    n += 1
                except OSError:
                    pass
            avail = mem_available()
            self.timeline.append((time.time() - self.start, total, main, n, avail))
            pk = self.peaks
            pk["tree_anon"], pk["main_anon"] = max(pk["tree_anon"], total), max(pk["main_anon"], main)
            pk["processes"] = max(pk["processes"], n)
            pk["min_available"] = avail if pk["min_available"] is None else min(pk["min_available"], avail)
            time.sleep(self.period_s)

    def summary(self) -> dict[str, float]:
        self.thread.join(timeout=2)
        pk = self.peaks
        return {
            "peak_tree_anon_gib": pk["tree_anon"] / GIB,
            "peak_main_anon_gib": pk["main_anon"] / GIB,
            "max_processes": pk["processes"],
            "min_mem_available_gib": (pk["min_available"] or 0) / GIB,
        }

    def write(self, path: Path) -> None:
        with path.open("w") as f:
            f.write("t_s\ttree_anon_gib\tmain_anon_gib\tprocesses\tmem_available_gib\n")
            for t, total, main, n, avail in self.timeline:
                f.write(f"{t:.2f}\t{total / GIB:.3f}\t{main / GIB:.3f}\t{n}\t{avail / GIB:.3f}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, help="write the timeline (TSV) here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    proc = subprocess.Popen(command)
    watch = Watch(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result = {"exit": code, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB, **watch.summary()}
    if args.log:
        watch.write(args.log)
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
          file=sys.stderr)  # fmt: skip
    return code


if __name__ == "__main__":
    raise SystemExit(main())
