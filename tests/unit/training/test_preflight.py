"""zsnr.training.preflight: what a run needs on the device and the host, and the refusal's message.

The plan here is made by hand (the trace itself is tested in test_memory_plan.py against measured memory), so the
sums can be checked against the closed form: on the CPU the host holds each process's runtime and whole plan;
on a GPU the device holds the plan and the host the runtime, a host EMA and the data workers.
"""

import logging

import pytest

from zsnr.training.memory_plan import GIB, MemoryPlan
from zsnr.training.preflight import (
    RUNTIME_BYTES,
    SHUFFLED_SAMPLE_BYTES,
    WORKER_BYTES,
    WORKER_SERVER_BYTES,
    MemoryCheckError,
    check_memory,
    host_available,
    memory_need,
    worker_bytes,
)

PARTS = {"unet": 3 * GIB, "ema": 3 * GIB, "frozen": 2 * GIB, "gradients": 3 * GIB, "adamw": 6 * GIB,
         "activations": 4 * GIB, "temporaries": GIB}  # fmt: skip
SETUP = {"micro_batch_size": 8, "strategy": "single"}


def plan(host: dict | None = None) -> MemoryPlan:
    return MemoryPlan(dict(PARTS), "optimizer step", dict(SETUP), host or {})


def test_cpu_host_holds_every_process_plan_runtime_and_workers():
    need = memory_need(plan(), "cpu", processes_per_node=2, num_workers=3, one_worker_bytes=GIB)
    assert need.device is None
    expected = 2 * (sum(PARTS.values()) + RUNTIME_BYTES) + 2 * (WORKER_SERVER_BYTES + 3 * GIB)
    assert need.total(need.host) == expected


def test_gpu_device_holds_the_plan_and_the_host_the_rest():
    need = memory_need(plan(host={"ema": 3 * GIB}), "gpu", processes_per_node=8, num_workers=0)
    assert need.device == PARTS
    assert need.total(need.host) == 8 * (RUNTIME_BYTES + 3 * GIB)  # an EMA on the host per process


def test_worker_bytes_closed_form():
    assert (
        worker_bytes(500, 2, 32 * 3 * 512 * 512)
        == WORKER_BYTES + 500 * SHUFFLED_SAMPLE_BYTES + 2 * 32 * 3 * 512**2
    )


def test_refusal_names_the_need_the_free_memory_and_the_settings():
    need = memory_need(plan(host={}), "gpu", processes_per_node=1, num_workers=2)
    with pytest.raises(MemoryCheckError) as err:
        check_memory(need, host_free=100 * GIB, device_free_bytes=20 * GIB)
    message = str(err.value)
    assert "device: needs 22.00 GiB" in message  # 3+3+2+3+6+4+1
    assert "20.00 GiB free, 18.00 GiB usable with 10% headroom" in message
    for setting in ("micro_batch_size=4", "model.gradient_checkpointing=true", "module.ema_on_cpu=true",
                    "trainer=fsdp", "data.num_workers=1", "memory_check.action=warn"):  # fmt: skip
        assert setting in message
    assert "host" not in message.split("To fit")[0]  # the host fits: only the device is named


def test_fits_warn_and_unknown_free_memory(caplog):
    need = memory_need(plan(), "cpu", processes_per_node=1, num_workers=0)
    total = need.total(need.host)
    report = check_memory(need, host_free=int(total / 0.95) + 1, device_free_bytes=None)
    assert report[0].endswith(": fits")
    with caplog.at_level(logging.WARNING, logger="zsnr.train"):
        check_memory(need, host_free=total, device_free_bytes=None, action="warn")  # 5% headroom: too little
    assert "does NOT fit" in caplog.text
    assert "not checked" in check_memory(need, host_free=None, device_free_bytes=None)[0]
    with pytest.raises(ValueError, match="action"):
        check_memory(need, None, None, action="maybe")


def test_host_available_reads_meminfo():
    free = host_available()
    assert free is None or 0 < free < 2**50
