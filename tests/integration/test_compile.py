"""module.compile=true through launch/train.py's train(): the tiny UNet's blocks compiled by inductor on the
CPU, trained for a few steps beside the same run in eager mode.

Asserted: every micro-batch loss within 1e-5 (relative) of eager (measured: 4e-7 after 4 steps), no graph
break in the compiled blocks, and no recompilation after the first step (the graphs compiled in step 1 serve
every later step). Compiling takes about two minutes of the test on two CPU cores; the steps after it are
as fast as eager's or faster.
"""

import pytest
import pytorch_lightning as pl
import torch
from distributed_data import read_losses
from training_helpers import compose, launch_module, tiny_run

STEPS = 3


class Graphs(pl.Callback):
    """Dynamo's counters after each optimizer step."""

    def __init__(self) -> None:
        self.per_step: dict[int, dict[str, int]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        from torch._dynamo.utils import counters

        self.per_step[trainer.global_step] = {
            "unique_graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "frames": counters["frames"]["total"],
        }


def _train(run_dir, data_root, compile: bool) -> tuple[dict[int, float], Graphs]:
    overrides = [*tiny_run(run_dir, data_root, steps=STEPS), f"module.compile={str(compile).lower()}",
                 "validation.every_n_steps=0", "samples.every_n_steps=0",
                 "+callbacks.loss._target_=distributed_data.LossRecorder", f"+callbacks.loss.path={run_dir}/losses"]  # fmt: skip
    train = launch_module("train")
    graphs = Graphs()
    made = train.instantiate

    def with_graphs(config, *args, **kwargs):
        out = made(config, *args, **kwargs)
        if isinstance(out, pl.Trainer):
            out.callbacks.append(graphs)
        return out

    train.instantiate = with_graphs
    train.train(compose("train", overrides))
    return read_losses(run_dir / "losses"), graphs


def test_compiled_blocks_train_like_eager_without_graph_breaks_or_recompiles(tmp_path, data_root):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, _ = _train(tmp_path / "eager", data_root, compile=False)
    compiled, graphs = _train(tmp_path / "compiled", data_root, compile=True)
    assert sorted(compiled) == sorted(eager) == list(range(2 * STEPS))  # two micro-batches per step
    for index, loss in eager.items():
        assert compiled[index] == pytest.approx(loss, rel=1e-5), index
    first, last = graphs.per_step[1], graphs.per_step[STEPS]
    assert first["graph_breaks"] == 0 and first["frames"] == 5  # down blocks, mid block, up blocks
    assert first["unique_graphs"] >= 5
    assert last == first, graphs.per_step  # nothing compiled again after step 1
