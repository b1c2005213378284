"""A tiny zsnr checkpoint (model=tiny, zero-SNR schedule) made by the real training code in a few seconds,
and the tiny stand-ins for the evaluation networks. Shared by the sample / evaluate / export tests.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

TINY_SPEC = {"kind": "tiny", "resolution": 32, "init_seed": 0}
ZERO_SNR = {"betas": "scaled_linear", "rescale_zero_terminal_snr": True, "prediction_type": "v_prediction"}


def shared_tiny_checkpoint(tmp_path_factory) -> Path:
    """One tiny checkpoint per test session (made on first use), for tests that only read it."""
    path = tmp_path_factory.getbasetemp() / "shared_tiny.ckpt"
    return path if path.is_file() else make_tiny_checkpoint(path)


def make_tiny_checkpoint(
    path: Path, steps: int = 2, model: dict | None = None, diffusion: dict | None = None
) -> Path:
    # imported here, not at the top: subprocesses that import this file for TinyFeatures do not have it
    from training_helpers import FixedBatchData

    from zsnr.training import DiffusionModule

    pl.seed_everything(0)
    module = DiffusionModule(
        model=model or TINY_SPEC, diffusion=diffusion or ZERO_SNR, lr=1e-3, ema_decay=0.5
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=FixedBatchData(batch_size=4, resolution=32))
    trainer.save_checkpoint(path)
    return path


class TinyFeatures(torch.nn.Module):
    """A stand-in for InceptionV3 (FID features and IS logits) with fixed random weights: the only part of an
    evaluation that differs from a real run. Importable as `_target_: tiny_checkpoint.TinyFeatures`."""

    def __init__(self, dim: int = 8, classes: int = 10) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, dim, kernel_size=4, stride=4)
            self.head = torch.nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.relu(self.conv(images.float() / 255.0)).mean(dim=(2, 3))
        return feats, self.head(feats)


def tiny_clip_score():
    """A random tiny OpenCLIP model as the CLIP-score model (`_target_: tiny_checkpoint.tiny_clip_score`)."""
    import open_clip

    from zsnr.evaluation.clip_score import CLIPScore

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(
            embed_dim=16,
            vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
            text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        )
    return CLIPScore(model, open_clip.tokenizer.SimpleTokenizer(), image_size=32)
