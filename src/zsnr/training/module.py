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
from zsnr.models.schedule import Schedule
from zsnr.models.unet import input_memory_format
from zsnr.sampling import text_to_image
from zsnr.training.checkpointing import restore_rng_states, rng_states
from zsnr.training.ema import EMASchedule, ema_update_
from zsnr.training.init_weights import apply_init_weights, load_init_weights
from zsnr.training.parallel import EMA_ON_CPU_UNDER_FSDP, parallelize_unet
from zsnr.training.steps import grad_norm, uncount_optimizer_step


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
        compile: bool = False,
        init_from: str | None = None,
        init_weights: str = "ema",
        max_consecutive_skips: int = 10,
        components: Components | None = None,
    ) -> None:
        """`components`: model parts already built for `model` (the memory planner's weightless ones); None
        builds them from the spec."""
        super().__init__()
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if lr_schedule == "cosine" and not total_steps:
            raise ValueError("lr_schedule='cosine' needs total_steps (the step at which the lr reaches 0)")
        ema_schedule = EMASchedule(ema_decay, ema_warmup, ema_every_n_steps)  # checks them before any model
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
        # Step accounting has this one owner (callbacks read it, checkpoints keep it):
        self.micro_step = 0  # training_step calls so far: seeds this step's noise, timesteps and dropout
        self.ema_schedule = ema_schedule  # EMA updates and the optimizer steps they took in
        self.skipped_steps = 0  # optimizer steps not taken for a non-finite loss or gradient
        self.consecutive_skips = 0
        self.stepped = False  # did the weights change in this batch (an optimizer step was applied)?
        self.last_grad_norm = float("nan")
        self._grad_norm: torch.Tensor | None = None  # as a tensor, for the clipping that follows
        self._bad_loss = False  # a micro-batch of the current accumulation window had a non-finite loss
        self._skip_step = False  # the decision for the optimizer step in progress

    # -- the training step -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
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
        per_sample = self.per_sample_loss(x0, text, t, noise)
        loss = per_sample.mean()
        self.micro_step += 1  # the loss is logged by TrainMetrics, per timestep bucket and as a mean
        if not self._finite_on_every_rank(loss):
            # no backward; the whole optimizer step this micro-batch belongs to is skipped
            self._bad_loss = True
            return None
        return {"loss": loss, "per_sample_loss": per_sample.detach(), "timesteps": t}

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

    def _finite_on_every_rank(self, loss: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(loss))
        return self._trainer.strategy.reduce_boolean_decision(finite, all=True) if self._trainer else finite

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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.stepped = False

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After the window's last backward, before clipping and AdamW: decide whether this step is taken. A
        non-finite loss in any micro-batch of the window, or a non-finite gradient norm (the same on every rank:
        gradients are reduced, the FSDP2 norm is global), drops the gradients, so AdamW changes nothing."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._grad_norm = grad_norm(params)
        self.last_grad_norm = float(self._grad_norm)
        self._skip_step = self._bad_loss or not math.isfinite(self.last_grad_norm)
        if self._skip_step:
            for p in params:
                # AdamW leaves parameters without gradients untouched (no moment, step or decay)
                p.grad = None

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:  # fmt: skip
        """Clip by the norm on_before_optimizer_step measured, rather than measure it again (one pass over the
        gradients, not two). Sharded gradients (FSDP2's DTensors) take Lightning's own clipping."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = self._grad_norm
        plain = norm is not None and all(type(p.grad) is torch.Tensor for p in params)
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and plain and not self._skip_step:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's step (closure, on_before_optimizer_step, clipping, AdamW), then the EMA. A skipped step
        is not a step: no EMA update, no LR-scheduler step (lr_scheduler_step), and global_step does not
        advance, so the run still makes max_steps real updates and no checkpoint is written for it."""
        self._skip_step = False
        super().optimizer_step(*args, **kwargs)
        self._bad_loss = False
        if self._skip_step:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if self.consecutive_skips >= self.hparams.max_consecutive_skips:
                raise RuntimeError(
                    f"{self.consecutive_skips} optimizer steps in a row had a non-finite loss or gradient (at step "
                    f"{self.trainer.global_step}, {self.skipped_steps} skipped in all); stopping. Lower the learning "
                    "rate, check the data (batch stats) and the precision setting, then resume from the last "
                    "checkpoint."
                )
            uncount_optimizer_step(self.trainer)
            return
        self.consecutive_skips = 0
        self.stepped = True
        decay = self.ema_schedule.step()  # every ema_every_n_steps real steps, with their decay in one
        if decay is not None:  # right after the weights changed, before any callback (checkpoints) sees it
            ema_update_(*self._ema_pairs(), decay)

    def _ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(EMA, UNet) parameters, listed once and again only when a module's tensors were replaced (FSDP's
        sharding in configure_model): walking both module trees at every step cost ~12 ms of a 184 ms tiny-UNet
        step under cProfile on a CPU (README, the overhead benchmark)."""
        firsts = (next(self.ema_unet.parameters()), next(self.unet.parameters()))
        cached = self.__dict__.get("_ema_lists")
        if cached is None or any(a is not b for a, b in zip(cached[0], firsts, strict=True)):
            cached = (firsts, list(self.ema_unet.parameters()), list(self.unet.parameters()))
            self.__dict__["_ema_lists"] = cached
        return cached[1], cached[2]

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if not self._skip_step:  # the warmup / cosine position counts real updates only
            scheduler.step()

    def configure_model(self) -> None:
        """Lightning calls this once the processes exist: compile / shard the UNet, and its EMA the same way."""
        mesh = self._device_mesh["data_parallel"] if self._device_mesh is not None else None  # FSDP2 only
        if mesh is not None and self.hparams.ema_on_cpu:
            raise ValueError(EMA_ON_CPU_UNDER_FSDP)
        precision = str(self._trainer.precision) if self._trainer is not None else "32-true"
        parallelize_unet(self.unet, mesh, precision, compile=self.hparams.compile)
        parallelize_unet(self.ema_unet, mesh)  # float32 compute; shards line up with the UNet's (ema_update_)

    def train(self, mode: bool = True) -> DiffusionModule:
        super().train(mode)
        self.ema_unet.eval()  # the average is never in training mode
        return self

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.unet.parameters(),
            lr=hp.lr,
            betas=tuple(hp.adam_betas),
            eps=hp.adam_eps,
            weight_decay=hp.weight_decay,
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
        checkpoint["zsnr"] = {
            "betas": self.schedule.make_betas(),
            "micro_step": self.micro_step,
            **self.ema_schedule.state_dict(),
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "rng": rng_states(),
        }
        if "ema_unet" not in self._modules:  # ema_on_cpu: outside the tree, saved under the usual keys
            checkpoint["state_dict"].update(
                {f"ema_unet.{k}": v for k, v in self.ema_unet.state_dict().items()}
            )
        if not self.frozen_from_files:  # random frozen parts (model=tiny): keep them with the weights
            checkpoint["frozen"] = {name: part.state_dict() for name, part in self._frozen.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("zsnr", {})
        if "betas" in saved and not torch.equal(saved["betas"].double(), self.schedule.make_betas()):
            raise ValueError(
                "the checkpoint was trained with another noise schedule than the diffusion config now given "
                f"({self.schedule}). Resume with the run's own diffusion=... settings."
            )
        self.micro_step = int(saved.get("micro_step", 0))
        self.ema_schedule.load_state_dict(saved)
        if "ema_unet" not in self._modules:  # ema_on_cpu: take the EMA out before Lightning loads the tree
            state = checkpoint["state_dict"]
            ema = {k[len("ema_unet.") :]: state.pop(k) for k in list(state) if k.startswith("ema_unet.")}
            self.ema_unet.load_state_dict(ema)
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        self.consecutive_skips = int(saved.get("consecutive_skips", 0))
        if "rng" in saved:
            restore_rng_states(saved["rng"])
        for name, state in checkpoint.get("frozen", {}).items():
            self._frozen[name].load_state_dict(state)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
