"""Fixtures of the integration tests."""

import pytest
from demo_runs import SHORT, run_demo


@pytest.fixture(scope="session")
def short_demo(tmp_path_factory):
    """(out_dir, metrics) of one shortened `make demo` (tests/integration/demo_runs.py): the demo's test checks
    it, the paper's reuses its training runs."""
    out = tmp_path_factory.mktemp("short") / "demo"
    return out, run_demo(out, *SHORT, timeout=1200)
