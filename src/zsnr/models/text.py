"""Text side of Stable Diffusion 2.x: offline BPE tokenisation and the two ways to run the text encoder.

SD 2.x was trained on the OpenCLIP ViT-H/14 text tower read at its *penultimate* layer (the output of the
second-to-last residual block, passed through the final LayerNorm). Two implementations give those states:

- `OpenCLIPTextEncoder`: an `open_clip` `TextTransformer`, as the original SD 2.x code ran it;
- `HFCLIPTextEncoder`: a transformers `CLIPTextModel` from a diffusers folder; that conversion already dropped
  the last block (23 layers), so its `last_hidden_state` is the same penultimate read-out.

Both take token ids from `Tokenizer`, which wraps open_clip's BPE whose vocabulary ships inside the package,
so nothing is ever downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from torch import nn

from zsnr.models.sd21 import VIT_H14_TEXT


class Tokenizer:
    """Captions -> LongTensor [B, context_length] with open_clip's bundled BPE (start, tokens, end, zero pad)."""

    def __init__(self, context_length: int = 77) -> None:
        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)

    def __call__(self, captions: list[str] | str) -> torch.Tensor:
        if isinstance(captions, str):
            captions = [captions]
        return self._bpe(list(captions))


class OpenCLIPTextEncoder(nn.Module):
    """open_clip `TextTransformer` read at its penultimate block (SD 2.x's `FrozenOpenCLIPEmbedder`)."""

    def __init__(
        self,
        width: int,
        heads: int,
        layers: int,
        output_dim: int | None = None,
        context_length: int = 77,
        vocab_size: int = 49408,
    ) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"the penultimate read-out needs at least 2 layers, got layers={layers}")
        self.width = width
        self.tower = TextTransformer(
            context_length=context_length,
            vocab_size=vocab_size,
            width=width,
            heads=heads,
            layers=layers,
            output_dim=output_dim or width,
        )

    @property
    def hidden_size(self) -> int:
        return self.width

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        penultimate = len(self.tower.transformer.resblocks) - 2
        out = self.tower.forward_intermediates(
            input_ids,
            indices=[penultimate],
            stop_early=True,
            normalize_intermediates=True,  # ln_final on the read-out, as SD 2.x does
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["text_intermediates"][0]

    def load_text_weights(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Load the text tower from a full OpenCLIP state dict (visual keys and others are ignored)."""
        own = self.tower.state_dict()
        picked = {k: v for k, v in state_dict.items() if k in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(
                f"{source} lacks {len(missing)} text-tower tensors of the OpenCLIP model (first: {missing[:3]}); "
                "is it an OpenCLIP ViT-H/14 checkpoint (open_clip_pytorch_model.bin of laion2b_s32b_b79k)?"
            )
        self.tower.load_state_dict(picked)


class HFCLIPTextEncoder(nn.Module):
    """transformers `CLIPTextModel` (diffusers layout); `last_hidden_state` is SD 2.x's conditioning."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


def load_open_clip_text(
    weights: str | Path, prefix: str = "", arch: dict[str, int] | None = None
) -> OpenCLIPTextEncoder:
    """An OpenCLIP text tower (ViT-H/14's unless `arch` says otherwise) with weights from a local file
    (`.bin`/`.pt` state dict, or `.safetensors`).

    `prefix` selects a sub-dict, e.g. "cond_stage_model.model." inside an original SD 2.x checkpoint.
    """
    from zsnr.models.files import load_state_dict, require_file

    path = require_file(
        weights,
        what="the OpenCLIP ViT-H/14 weights",
        download="open_clip_pytorch_model.bin of laion/CLIP-ViT-H-14-laion2B-s32B-b79K on the Hugging Face hub",
    )
    state = load_state_dict(path)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    encoder = OpenCLIPTextEncoder(**(arch or VIT_H14_TEXT))
    encoder.load_text_weights(state, source=str(path))
    return encoder


def write_bpe_files(tokenizer: Tokenizer, folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt (the files of stabilityai's tokenizer/ folders) from open_clip's bundled BPE."""
    bpe = tokenizer._bpe
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {specials.get(k, k): v for k, v in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def clip_tokenizer(tokenizer: Tokenizer):
    """transformers CLIPTokenizer with the BPE that open_clip bundles, padding with "!" = id 0 as open_clip does
    (stabilityai's SD 2.x tokenizer does the same). One known difference, shared with stabilityai's folders: a
    "!" in a prompt becomes the pad token (id 0) instead of "!</w>" (id 256)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_bpe_files(tokenizer, Path(tmp))
        return CLIPTokenizer(
            vocab=str(vocab), merges=str(merges), pad_token="!", model_max_length=tokenizer.context_length
        )
