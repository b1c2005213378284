"""Collect benchmark files (bench_*.py) as tests: `make bench` runs `pytest -s tests/bench -k bench`.

A benchmark's full run is marked slow (so `make test` skips it, `make bench` and `make test-all` run it);
a tiny version of it may stay unmarked when it takes a few seconds and checks that the benchmark still works.
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself: adding it again would run it twice
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
