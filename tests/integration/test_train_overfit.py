"""The tiny model overfits one fixed batch: its v-loss at fixed (t, noise) falls at least 4x in 60 steps.

The batch is fixed latents (a latent-cache batch with no posterior std, so x0 is the same every step: with
the tiny random VAE's wide posterior, a fresh x0 sample every step could not be overfitted). The loss is
evaluated at 8 timesteps spread over 0..999 with fixed noise, so the drop is not an accident of which t were
drawn.
"""

import pytorch_lightning as pl
import torch
from training_helpers import TINY_SPEC, ZERO_SNR, FixedBatchData, RepeatedBatch

from zsnr.data import to_model_range
from zsnr.diffusion import add_noise, v_target
from zsnr.training import DiffusionModule


def test_tiny_model_overfits_a_fixed_batch():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR, lr=2e-3, warmup_steps=10, caption_dropout=0.0)
    images = FixedBatchData(batch_size=8).batch
    x0, _ = module.autoencoder.posterior(to_model_range(images["image"]))
    text = module.text_encoder(module.tokenizer(images["caption"]))
    data = LatentData({"latent_mean": x0, "text_states": text})
    t = torch.linspace(0, 999, 16).long().repeat_interleave(1)[: len(x0)]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(123))
    abar = module._abar[t]

    @torch.no_grad()
    def fixed_loss() -> float:
        pred = module.unet(add_noise(x0, noise, abar), t, encoder_hidden_states=text).sample
        return (pred - v_target(x0, noise, abar)).square().mean().item()

    before = fixed_loss()
    trainer = pl.Trainer(
        max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    after = fixed_loss()
    assert after < before / 4, (before, after)


class LatentData(pl.LightningDataModule):
    def __init__(self, batch: dict) -> None:
        super().__init__()
        self.batch = batch

    def train_dataloader(self):
        return torch.utils.data.DataLoader(RepeatedBatch(self.batch), batch_size=None)
