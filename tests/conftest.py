"""Shared fixtures (helpers for the training tests live in tests/training_helpers.py)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# configs/train.yaml's memory_check.action: the tests' seconds-long runs skip the trace (seconds each, a few
# minutes over the suite); tests/integration/test_memory_check.py turns it on where the check is the subject
os.environ.setdefault("ZSNR_MEMORY_CHECK", "off")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")
