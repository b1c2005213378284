"""module.compile through launch/train.py's train(), inductor on the CPU, against the same run in eager mode:
true (= blocks: each of the tiny UNet's 5 blocks compiled in place) and loss (add_noise, the UNet, the target
and the weighted MSE as one graph).

Asserted: every micro-batch loss within 1e-5 (relative) of eager (measured: 4e-7 for blocks, 2e-7 for loss, 4
steps), no graph break in what is compiled, and no recompilation after the first step (the graphs compiled in
step 1 serve every later step). Compiling the blocks takes about 100 s of the test on two CPU cores, the loss
about 15 s. (Compiling micro_batch_loss whole, random draws and tokenizer included, breaks the graph 27 times:
torch.Generator is opaque to torch.compile, and caption strings recompile the tokenizer; so "loss" starts after
the draws.)
"""

import pytest
import pytorch_lightning as pl
import torch
from distributed_data import read_losses
from training_helpers import compose, tiny_run, train_with

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


def _train(run_dir, data_root, compile: str) -> tuple[dict[int, float], Graphs]:
    overrides = [*tiny_run(run_dir, data_root, steps=STEPS), f"module.compile={compile}",
                 "validation.every_n_steps=0", "samples.every_n_steps=0",
                 "+callbacks.loss._target_=distributed_data.LossRecorder", f"+callbacks.loss.path={run_dir}/losses"]  # fmt: skip
    graphs = Graphs()
    train_with(compose("train", overrides), graphs)
    return read_losses(run_dir / "losses"), graphs


@pytest.fixture(scope="module")
def eager(tmp_path_factory, data_root) -> dict[int, float]:
    return _train(tmp_path_factory.mktemp("eager"), data_root, "false")[0]


@pytest.mark.parametrize("compile, frames", [("true", 5), ("loss", 1)], ids=["blocks", "loss"])
def test_compiled_training_matches_eager_without_graph_breaks_or_recompiles(
    tmp_path, data_root, eager, compile, frames
):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled, graphs = _train(tmp_path, data_root, compile)
    assert sorted(compiled) == sorted(eager) == list(range(2 * STEPS))  # two micro-batches per step
    for index, loss in eager.items():
        assert compiled[index] == pytest.approx(loss, rel=1e-5), index
    first, last = graphs.per_step[1], graphs.per_step[STEPS]
    assert first["graph_breaks"] == 0 and first["frames"] == frames  # 5 blocks, or the loss
    assert first["unique_graphs"] >= frames
    assert last == first, graphs.per_step  # nothing compiled again after step 1
