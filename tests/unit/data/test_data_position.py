"""The typed data position (zsnr.data.position): a state saved by the version before it still resumes exactly,
and its dict form round-trips unchanged.

fixtures/stream_state_v1.pt holds what that version wrote: WebDataModule.state_dict() after 7 batches of the
aspect-ratio shard set (4 shards, 2 workers, buckets, epoch_length=48: 12 batches an epoch), the keys of the 12
batches it read next when resumed from that state (across the end of the data epoch), and its state_dict()
after them. Shard URLs are stored under "{root}" (they only name shards in messages)."""

import copy
from pathlib import Path

import torch

from zsnr.data import WebDataModule
from zsnr.data.position import StreamState

FIXTURE = Path(__file__).parent / "fixtures" / "stream_state_v1.pt"


def with_root(value, root: str):
    if isinstance(value, dict):
        return {k: with_root(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [with_root(v, root) for v in value]
    return value.replace("{root}", root) if isinstance(value, str) else value


def test_a_state_saved_before_the_typed_position_resumes_where_it_did(aspect_shards):
    saved = torch.load(FIXTURE, weights_only=True)
    root = str(Path(aspect_shards.paths[0]).parent)
    state = with_root(saved["state"], root)
    typed = StreamState.from_dict(state)
    assert typed.to_dict() == state  # the dict form is the format it was saved in
    assert typed.continues(state["fingerprint"]) and typed.ranks[0].position.batches == 7
    dm = WebDataModule(urls=aspect_shards.urls, **saved["datamodule"])
    dm.load_state_dict(copy.deepcopy(state))
    dm.setup()
    keys = []
    while len(keys) < len(saved["next_keys"]):
        for batch in dm.train_dataloader():
            keys.append(list(batch["key"]))
            if len(keys) == len(saved["next_keys"]):
                break
    assert keys == saved["next_keys"]
    assert dm.state_dict() == with_root(saved["state_after"], root)


def test_a_changed_layout_goes_on_reseeded_from_the_saved_epoch():
    saved = StreamState.from_dict(torch.load(FIXTURE, weights_only=True)["state"])
    now = {**saved.fingerprint, "batch_size": 8}
    assert not saved.continues(now) and saved.changes(now) == {"batch_size": (4, 8)}
    position = saved.reseeded()
    assert (position.epoch, position.workers, position.reseed) == (0, {}, "0.7")
    assert position.seed(3) == "3/resumed/0.7" and saved.ranks[0].position.seed(3) == 3
