"""What a resume's checkpoint load adds to the anonymous memory of each process (load_memory.LoadMemory).

A wide tiny UNet (about 70M parameters: 270 MB per weight part) trains 1 step and saves, then resumes for a
second step, through `python launch/train.py`, in one process (a single-file checkpoint) and in two FSDP2
processes (a sharded checkpoint, one piece per rank). Measured from the model built to the first batch,
sampled every millisecond.

A transient copy shows as a peak above what the window ends with; what stays is what training keeps.
- Single file: the weights are copied into the model's own tensors from the memory-mapped file, the EMA's
  likewise; the AdamW moments stay mapped until the first step writes them. Measured: the load adds 0.02 of
  one part (277 MB) and the peak is the end. Asserted: under a tenth of a part, either way.
- Sharded: torch.distributed.checkpoint reads each rank's shard into tensors allocated once: AdamW's two moments
  (the state the run needs anyway, allocated here instead of at the first step), after the zero gradients
  torch allocates to initialise that state; sharding the model frees part of what it held. Measured per rank:
  +1.3 shards (139 MB each) from the model built to the first batch, the peak equal to the end. Asserted: no
  transient copy (peak - end under a tenth of a shard) and at most those three shards kept.
"""

import json
from pathlib import Path

import pytest
from training_helpers import run_train

pytestmark = pytest.mark.distributed
WIDE = [
    "model=tiny",
    "model.unet.block_out_channels=[256,512]",
    "model.unet.layers_per_block=2",
    "model.unet.attention_head_dim=[8,8]",
    "model.unet.norm_num_groups=32",
]
COMMON = [
    *WIDE,
    "data._target_=distributed_data.IndexedBatches",
    "logger=csv",
    "global_batch_size=2",
    "micro_batch_size=1",
    "checkpoint.every_n_steps=1",
    "samples.every_n_steps=0",
    "validation.every_n_steps=0",
    "+callbacks.load_memory._target_=load_memory.LoadMemory",
    "+callbacks.load_memory.path=${run_dir}/load_memory/to${max_steps}",
]


def records(run_dir: Path, steps: int) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in sorted((run_dir / "load_memory" / f"to{steps}").glob("*.json"))
    ]


def train_and_resume(tmp_path: Path, strategy: list[str]) -> tuple[list[dict], list[dict]]:
    run_dir = tmp_path / "run"
    args = [*COMMON, *strategy, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    run_train([*args, "max_steps=1"], tmp_path)
    run_train([*args, "max_steps=2", "resume=auto"], tmp_path)
    fresh, resumed = records(run_dir, 1), records(run_dir, 2)
    assert [r["step"] for r in resumed] == [1] * len(resumed)  # the window ends with step 1 restored
    return fresh, resumed


def in_parts(record: dict) -> dict[str, float]:
    """What the load window added (kept: end - start) and held only for a while (transient: peak - end), in
    units of one UNet (this rank's shard of it)."""
    part = record["unet_bytes"]
    return {
        "kept": (record["end"] - record["start"]) / part,
        "transient": (record["peak"] - record["end"]) / part,
    }


def test_single_file_resume_loads_without_a_copy(tmp_path):
    fresh, resumed = train_and_resume(tmp_path, ["trainer=cpu"])
    (record,) = resumed
    assert record["unet_bytes"] > 250e6  # big enough that a copy would show
    added = in_parts(record)
    assert added["transient"] < 0.1 and added["kept"] < 0.1, (added, fresh)


def test_sharded_resume_loads_each_shard_once(tmp_path):
    fresh, resumed = train_and_resume(tmp_path, ["trainer=fsdp", "trainer.devices=2"])
    assert len(resumed) == 2
    for record in resumed:
        assert record["unet_bytes"] > 120e6  # this rank's shard of one part
        added = in_parts(record)
        assert added["transient"] < 0.1 and added["kept"] <= 3.1, (added, fresh)
