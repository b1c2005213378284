"""The LightningModule: fine-tune a Stable Diffusion UNet with the schedule and loss of a `diffusion=` config.

Only the UNet trains. The autoencoder and text encoder are frozen, in eval mode, run under no_grad, and kept
*outside* the module tree (a plain dict): they are never wrapped by DDP, sharded by FSDP, or written to
checkpoints (unless they were built randomly, as in model=tiny, so a checkpoint can still be sampled).
An EMA copy of the UNet (`ema_unet`, float32, no grad) *is* part of the tree, so every strategy saves, shards
and restores it with the model; with `ema_on_cpu` it stays outside the tree in host memory (never moved to the
accelerator, never wrapped) and on_save_checkpoint / on_load_checkpoint keep it under the same keys.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from zsnr.data import to_model_range
from zsnr.diffusion import add_noise, loss_weights, snr, v_target
from zsnr.models import Components, build_components
from zsnr.models.autoencoders import sample_posterior
from zsnr.models.checkpoint import TrainingCheckpoint, write_training_state
from zsnr.models.schedule import Schedule
from zsnr.models.unet import input_memory_format
from zsnr.sampling import text_to_image
from zsnr.training.checkpointing import steps_under_manual_optimisation
from zsnr.training.ema import EMA, EMASchedule
from zsnr.training.init_weights import apply_init_weights, load_init_weights
from zsnr.training.parallel import (
    EMA_ON_CPU_UNDER_FSDP,
    LightningDataParallel,
    compile_choice,
    parallelize_unet,
)
from zsnr.training.step import SkipCounter, StepResult, Update, train_step


class DiffusionModule(pl.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        diffusion: dict[str, Any],
        lr: float = 1e-4,
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        total_steps: int | None = None,
        weight_decay: float = 1e-2,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        ema_decay: float = 0.9999,
        ema_warmup: bool = False,
        ema_every_n_steps: int = 1,
        ema_on_cpu: bool = False,
        caption_dropout: float = 0.1,
        seed: int = 0,
        compile: bool | str = False,
        compile_mode: str | None = None,
        init_from: str | None = None,
        init_weights: str = "ema",
        max_consecutive_skips: int = 10,
        max_grad_norm: float | None = 1.0,
        fused_adamw: bool = False,
        components: Components | None = None,
    ) -> None:
        """`components`: model parts already built for `model` (the memory planner's weightless ones); None
        builds them from the spec. max_grad_norm: clip the gradients' total norm to it (None or 0: no clipping).
        fused_adamw: torch's fused AdamW kernel (one kernel for all parameters, no per-parameter host work;
        the fast choice on GPUs) instead of its default foreach implementation. compile: false, true / "blocks"
        or "loss" (zsnr.training.parallel.compile_choice); compile_mode: torch.compile's mode (None: default;
        "reduce-overhead": CUDA graphs)."""
        super().__init__()
        self.automatic_optimization = False  # the update is train_step's, written out in one function
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if lr_schedule == "cosine" and not total_steps:
            raise ValueError("lr_schedule='cosine' needs total_steps (the step at which the lr reaches 0)")
        ema_schedule = EMASchedule(ema_decay, ema_warmup, ema_every_n_steps)  # checks them before any model
        compile_choice(compile)  # likewise
        self.save_hyperparameters(ignore=["components"])
        self.schedule = Schedule(**diffusion)
        s = self.schedule
        if (
            s.loss_weighting == "min_snr"
            and s.prediction_type == "v_prediction"
            and s.rescale_zero_terminal_snr
        ):
            rank_zero_warn(
                "loss_weighting=min_snr with v-prediction weighs t = T by min(SNR, gamma) / (SNR + 1) = 0 under zero "
                "terminal SNR: the step the fix exists for is never trained. Use loss_weighting=min_snr_plus_one "
                "(x0-space weight min(SNR + 1, gamma), 1 at t = T) or plain (the paper's v-loss)."
            )
        # init_from: checked and read before the model is built (the UNet then skips its pretrained weights)
        init = load_init_weights(init_from, init_weights) if init_from else None
        parts = components or build_components(model, pretrained_unet=init is None)
        frozen = {"autoencoder": parts.autoencoder, "text_encoder": parts.text_encoder}
        if init is not None:  # random frozen parts (model=tiny) come with the UNet they were trained with
            apply_init_weights(
                init, parts.unet, {} if parts.frozen_from_files else frozen, str(model.get("kind"))
            )
        self.unet = parts.unet
        ema = copy.deepcopy(self.unet).float().requires_grad_(False).eval()
        if ema_on_cpu:  # a plain attribute, outside the module tree: Lightning never moves or wraps it
            object.__setattr__(self, "ema_unet", ema)
        else:
            self.ema_unet = ema
        self.tokenizer = parts.tokenizer
        self.resolution = parts.resolution
        self.frozen_from_files = parts.frozen_from_files
        self._frozen = frozen
        self._abar = self.schedule.alphas_cumprod().float()
        self._empty_text: torch.Tensor | None = None
        # The step's state besides Lightning's global_step (applied optimizer steps); checkpoints keep it:
        self.micro_step = 0  # micro-batches so far: seeds each one's noise, timesteps and dropout
        self.ema = EMA(self.ema_unet, self.unet, ema_schedule)  # updates and the steps they took in
        self.skips = SkipCounter(max_consecutive_skips)
        self.last_step: StepResult | None = None  # what the latest step did: callbacks read it
        self._dp = LightningDataParallel(self)
        self._loss = self.per_sample_loss  # compiled by configure_model with compile="loss"

    # -- the training step -------------------------------------------------------------------------------
    def training_step(self, window: list[dict[str, Any]] | dict[str, Any], batch_idx: int) -> None:
        """One optimizer step over a window of micro-batches (a lone batch is a window of one): the update is
        zsnr.training.step.train_step; callbacks read its result as `last_step`."""
        update = Update(
            self._params(), self.optimizers(), self.lr_schedulers(), self.ema, self.hparams.max_grad_norm,
            self.skips, self.trainer.global_step,
        )  # fmt: skip
        self.last_step = train_step(
            update, window if isinstance(window, list) else [window], self.micro_batch_loss, self._dp
        )

    def micro_batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective on one micro-batch: (per-sample loss [B], timesteps [B]). Reads top to bottom: encode,
        drop captions, pick t, draw noise, predict, loss."""
        g = self._step_generator()  # a function of (seed, rank, micro-step): resumes exactly
        x0, text = self.encode_batch(batch, g)  # a posterior sample, from the frozen encoders or the cache
        b, dev = x0.shape[0], x0.device
        drop = torch.rand(b, generator=g, device=dev) < self.hparams.caption_dropout
        text = torch.where(drop[:, None, None], self.empty_text_state().to(text.dtype), text)  # for CFG
        t = torch.randint(0, self.schedule.num_timesteps, (b,), generator=g, device=dev)  # all T, T-1 too
        noise = torch.randn(x0.shape, generator=g, device=dev)
        if self.schedule.offset_noise:
            noise = noise + self.schedule.offset_noise * torch.randn(
                b, x0.shape[1], 1, 1, generator=g, device=dev
            )
        self.micro_step += 1
        if self.hparams.compile_mode == "reduce-overhead":  # CUDA graphs: a new step, outputs copied out
            torch.compiler.cudagraph_mark_step_begin()
            return self._loss(x0, text, t, noise).clone(), t
        return self._loss(x0, text, t, noise), t

    def per_sample_loss(
        self, x0: torch.Tensor, text: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The objective per sample: noise x0 to x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, predict, MSE to the
        target of the config's prediction_type (v = sqrt(abar) eps - sqrt(1 - abar) x0 for the paper's v-loss)
        times loss_weights; float32 [B]."""
        abar = self._abar.to(x0.device)[t]
        x_t = add_noise(x0, noise, abar).contiguous(memory_format=input_memory_format(self.unet))
        pred = self.unet(x_t, t, encoder_hidden_states=text).sample
        target = {"v_prediction": v_target, "epsilon": lambda x0, n, a: n, "sample": lambda x0, n, a: x0}[
            self.schedule.prediction_type
        ](x0, noise, abar)
        s = self.schedule
        weights = loss_weights(snr(abar), s.prediction_type, s.loss_weighting, s.min_snr_gamma)
        return (pred.float() - target.float()).square().mean(dim=(1, 2, 3)) * weights.float()

    @torch.no_grad()
    def fixed_timestep_losses(
        self, batches: list[dict[str, Any]], timesteps: list[int], seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sums [K], sample counts [K]) of the online UNet on `batches` at each of `timesteps`, with the
        posterior sample and noise drawn from a generator keyed on (seed, batch index) only: the same numbers
        at every step, in every run and after any resume. Rank r takes batches r, r + W, ...; every rank makes
        the same number of UNet calls (a sharded UNet needs them all), and the caller sums over ranks."""
        world = self._trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank
        sums = torch.zeros(len(timesteps), dtype=torch.float64, device=self.device)
        counts = torch.zeros_like(sums)
        was_training = self.unet.training
        self.unet.eval()
        try:
            for start in range(0, len(batches), world):
                index = start + rank
                weight = 1.0 if index < len(batches) else 0.0  # padding: same calls, counted nowhere
                batch = _to_device(batches[min(index, len(batches) - 1)], self.device)
                g = torch.Generator(device=self.device).manual_seed(int(seed) * 1_000_003 + index)
                x0, text = self.encode_batch(batch, g)
                for k, t in enumerate(timesteps):
                    noise = torch.randn(x0.shape, generator=g, device=self.device)
                    tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=self.device)
                    sums[k] += weight * self.per_sample_loss(x0, text, tt, noise).double().sum()
                    counts[k] += weight * x0.shape[0]
        finally:
            self.unet.train(was_training)
        return sums, counts

    # -- frozen encoders -----------------------------------------------------------------------------------
    @property
    def autoencoder(self) -> torch.nn.Module:
        return self._frozen_on_device()["autoencoder"]

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self._frozen_on_device()["text_encoder"]

    def _frozen_on_device(self) -> dict[str, torch.nn.Module]:
        for part in self._frozen.values():
            if next(part.parameters(), torch.empty(0, device=self.device)).device != self.device:
                part.to(self.device)
        return self._frozen

    @torch.no_grad()
    def encode_batch(
        self, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, text states). x0 is drawn from the VAE posterior with `generator` (the step's: the draw comes
        first, so the cache and the encoders give the same x0), from the latent cache when the batch has one
        (zsnr.data.latents), else from the frozen autoencoder; pixel space has no posterior noise."""
        if "latent_mean" in batch:
            mean, std, text = batch["latent_mean"], batch.get("latent_std"), batch["text_states"]
        else:
            mean, std = self.autoencoder.posterior(to_model_range(batch["image"]))
            ids = batch.get("input_ids")
            text = self.text_encoder(
                (self.tokenizer(batch["caption"]) if ids is None else ids).to(self.device)
            )
        return sample_posterior(mean, std, generator), text

    @torch.no_grad()
    def empty_text_state(self) -> torch.Tensor:
        """Text states of the empty caption [1, L, D]: what caption dropout trains and CFG's negative."""
        if self._empty_text is None or self._empty_text.device != self.device:
            self._empty_text = self.text_encoder(self.tokenizer([""]).to(self.device))
        return self._empty_text

    def sample_images(
        self, prompts: list[str], seeds: list[int], use_ema: bool = True, **kwargs
    ) -> torch.Tensor:
        """Images in [-1, 1] for (prompt, seed) pairs with the EMA (or current) UNet; kwargs: text_to_image's."""
        unet = self.ema_unet if use_ema else self.unet
        was_training = unet.training
        unet.eval()
        visiting = next(unet.parameters()).device != self.device
        if visiting:  # an EMA kept on the CPU (ema_on_cpu) comes to the accelerator for the grid only
            unet.to(self.device)
        try:
            return text_to_image(
                unet, self.autoencoder, self.text_encoder, self.tokenizer, self.schedule, prompts, seeds,
                self.resolution, **kwargs,
            )  # fmt: skip
        finally:
            unet.train(was_training)
            if visiting:
                unet.to("cpu")

    # -- randomness, EMA, optimiser -------------------------------------------------------------------------
    def _step_generator(self) -> torch.Generator:
        # keyed on the global micro-batch index: W processes x A accumulation steps draw the same numbers as
        # 1 process x W*A steps (what makes DDP/FSDP runs match a one-process run with more accumulation)
        world = self._trainer.world_size if self._trainer is not None else 1
        index = self.micro_step * world + self.global_rank
        key = hash((int(self.hparams.seed), index)) % (2**63)
        return torch.Generator(device=self.device).manual_seed(key)

    def configure_model(self) -> None:
        """Lightning calls this once the processes exist: compile / shard the UNet, and its EMA the same way."""
        mesh = self.device_mesh["data_parallel"] if self.device_mesh is not None else None  # FSDP2 only
        if mesh is not None and self.hparams.ema_on_cpu:
            raise ValueError(EMA_ON_CPU_UNDER_FSDP)
        precision = str(self._trainer.precision) if self._trainer is not None else "32-true"
        compiled = compile_choice(self.hparams.compile)
        if compiled == "loss" and mesh is not None:
            raise ValueError(
                "module.compile=loss is not tested with trainer=fsdp: use module.compile=blocks there"
            )
        parallelize_unet(self.unet, mesh, precision, compile=compiled, compile_mode=self.hparams.compile_mode)
        if compiled == "loss" and self._loss == self.per_sample_loss:
            self._loss = torch.compile(self.per_sample_loss, mode=self.hparams.compile_mode)
        parallelize_unet(self.ema_unet, mesh)  # float32 compute; shards line up with the UNet's (ema_update_)

    def train(self, mode: bool = True) -> DiffusionModule:
        super().train(mode)
        self.ema_unet.eval()  # the average is never in training mode
        return self

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizers().param_groups for p in group["params"]]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.unet.parameters(),
            lr=hp.lr,
            betas=tuple(hp.adam_betas),
            eps=hp.adam_eps,
            weight_decay=hp.weight_decay,
            fused=True if hp.fused_adamw else None,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        hp = self.hparams
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        if hp.lr_schedule == "cosine":
            progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.total_steps - hp.warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    # -- checkpoints --------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = {
            "micro_step": self.micro_step,
            **self.ema.schedule.state_dict(),
            **self.skips.state_dict(),
        }
        outside = "ema_unet" not in self._modules  # ema_on_cpu: outside the tree, saved under the usual keys
        write_training_state(
            checkpoint,
            self.schedule.make_betas(),
            counters,
            ema_outside_tree=self.ema_unet.state_dict() if outside else None,
            # random frozen parts (model=tiny): kept with the weights
            frozen=None if self.frozen_from_files else {n: p.state_dict() for n, p in self._frozen.items()},
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        steps_under_manual_optimisation(checkpoint)  # before Lightning restores its loops from it
        saved = TrainingCheckpoint(checkpoint)
        saved.check_schedule(
            self.schedule,
            "The checkpoint was trained with another noise schedule than the diffusion config now given. Resume "
            "with the run's own diffusion=... settings.",
        )
        self.micro_step = int(saved.counters.get("micro_step", 0))
        self.ema.schedule.load_state_dict(saved.counters)
        if "ema_unet" not in self._modules:  # ema_on_cpu: take the EMA out before Lightning loads the tree
            self.ema_unet.load_state_dict(saved.pop_ema())
        self.skips.load_state_dict(saved.counters)
        saved.restore_rng()
        for name, state in saved.frozen.items():
            self._frozen[name].load_state_dict(state)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
