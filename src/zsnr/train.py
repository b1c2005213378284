"""Train (fine-tune) a Stable Diffusion UNet from a composed configs/train.yaml: what `python launch/train.py` runs.

`python -m zsnr.train --config-dir PATH/TO/configs [overrides]` runs it without the checkout's launch/ (an
installed package: the configs are not part of it, so their folder is named); the experiments (`make demo`,
`make paper`) start their runs this way. The overrides, the run directory and .hydra/ are the same as
launch/train.py's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from zsnr.data import check_no_run_keys
from zsnr.models import Tokenizer, check_model_files, encoder_signature, size_multiple
from zsnr.training import (
    AtomicCheckpoint,
    StreamingCheckpointIO,
    plan_batches,
    resolve_resume,
    world_size,
)
from zsnr.training.callbacks import ProgressBar
from zsnr.training.cluster import (
    SlurmRequeue,
    multirun_job_scope,
    on_slurm,
    slurm_plugins,
    wait_for_launched_ranks,
)
from zsnr.training.loggers import wandb_run_id
from zsnr.training.memory_plan import GIB, MemoryPlan
from zsnr.training.parallel import EMA_ON_CPU_UNDER_FSDP
from zsnr.training.preflight import check_memory, device_free, host_available, memory_need, worker_bytes

log = logging.getLogger("zsnr.train")


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed where the run computes on a GPU (planned_accelerator), 32-true on the CPU."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if planned_accelerator(accelerator) == "gpu" else "32-true"


def resolve_progress_bar(setting: Any) -> bool:
    """`auto`: Lightning's live bar only on a terminal; in a SLURM log or a pipe it would write a line per
    update, and TrainMetrics prints a `step N/M` line per metrics interval there instead."""
    return sys.stdout.isatty() if setting == "auto" else bool(setting)


def wandb_offline(setting: Any) -> bool:
    """`auto`: offline unless WANDB_MODE says otherwise or an API key is configured (wandb login)."""
    if setting != "auto":
        return bool(setting)
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"] in ("offline", "disabled", "dryrun")
    try:
        import wandb

        return not wandb.api.api_key
    except Exception:
        return True


def finish_wandb(trainer: pl.Trainer) -> None:
    """Close the wandb run, or the next job of a multirun (same process) would log into this one."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def strategy_of(trainer: DictConfig, world: int) -> str:
    """single / ddp / fsdp, as the Trainer built from this config would run."""
    target = str(trainer.strategy.get("_target_", "")) if isinstance(trainer.strategy, DictConfig) else ""
    if "FSDP" in target or "ModelParallel" in target:
        return "fsdp"
    return "ddp" if "DDP" in target or world > 1 else "single"


def planned_accelerator(accelerator: str) -> str:
    """ "gpu" or "cpu": whether the run computes on a CUDA device (accelerator auto, gpu or cuda where CUDA is
    visible), whose memory the check asks CUDA for and where precision auto means bf16-mixed; or in the host's
    memory: the CPU, and Apple's mps (unified memory; Lightning's auto and gpu pick it where CUDA is absent),
    both 32-true under auto. Other accelerators (tpu, hpu, ...) are refused: nothing here plans for them."""
    if accelerator in ("cpu", "mps"):
        return "cpu"
    if accelerator in ("auto", "gpu", "cuda"):
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    raise ValueError(
        f"trainer.accelerator={accelerator!r}: zsnr plans memory and precision for auto, cpu, gpu / cuda and mps"
    )


def plan_step(cfg: DictConfig, accelerator: str, precision: str) -> MemoryPlan:
    """The memory of one training step of this config per device (zsnr.training.memory_plan's trace), for
    `accelerator` ("cpu" / "gpu") and a resolved `precision`."""
    from zsnr.training.memory_plan import plan_memory

    world = world_size(cfg.trainer.devices, cfg.trainer.num_nodes, "cpu" if accelerator == "cpu" else "auto")
    batches = plan_batches(cfg.global_batch_size, cfg.micro_batch_size, world)
    result = plan_memory(
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(cfg.diffusion, resolve=True),
        batches.micro_batch_size,
        precision=precision,
        strategy=strategy_of(cfg.trainer, world),
        world_size=world,
        accumulation=batches.accumulate_grad_batches,
        accelerator=accelerator,
        latents=cfg.data.get("decode") == "latents",
        ema_on_cpu=bool(cfg.module.get("ema_on_cpu", False)),
    )
    if (cfg.data.get("buckets") or {}).get("enabled"):
        result.notes.append("data.buckets: planned at the square, which no bucket exceeds in pixels")
    if cfg.trainer.devices == "auto":
        result.notes.append("trainer.devices=auto: planned for one device per node; set trainer.devices=N")
    return result


def check_run_memory(cfg: DictConfig, precision: str) -> None:
    """Before anything loads: plan the step and refuse (memory_check.action) a run that cannot fit."""
    check = cfg.memory_check
    action = check.action
    if action == "off":
        return
    accelerator = planned_accelerator(cfg.trainer.accelerator)
    started = time.monotonic()
    plan = plan_step(cfg, accelerator, precision)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    data, res = cfg.data, int(cfg.model.resolution)
    batch = plan.setup["micro_batch_size"] * 3 * res * res  # uint8 images (a latent cache's are smaller)
    one_worker = worker_bytes(int(data.get("shuffle_buffer", 0)), int(data.get("prefetch_factor", 2)), batch)
    need = memory_need(
        plan,
        accelerator,
        plan.setup["world_size"] // int(cfg.trainer.num_nodes),
        int(data.get("num_workers", 0)),
        one_worker,
    )
    # the node's first process checks the host, before any process of the node loads (Lightning starts the
    # others after this one has loaded its model; srun and torchrun start them together)
    host_free = host_available() if local_rank == 0 else None
    if host_free is not None and check.host_limit_gib is not None:
        host_free = min(host_free, int(float(check.host_limit_gib) * GIB))
    report = check_memory(
        need,
        host_free,
        device_free(_device_index(cfg.trainer.devices, local_rank)) if accelerator == "gpu" else None,
        float(check.device_headroom),
        float(check.host_headroom),
        action,
    )
    log.info("memory check (%.1f s): %s", time.monotonic() - started, "; ".join(report))


def _device_index(devices: Any, local_rank: int) -> int:
    """The CUDA device this process trains on: trainer.devices as a list of ids picks them in order."""
    if isinstance(devices, str) and "," in devices:
        devices = [int(d) for d in devices.split(",") if d.strip()]
    return int(list(devices)[local_rank]) if not isinstance(devices, (int, str)) else local_rank


def build_logger(cfg: DictConfig) -> Any:
    if "offline" in cfg.logger:  # wandb: one wandb run for all attempts of this run (resume, requeue)
        run_id = wandb_run_id(cfg.run_dir)
        return instantiate(cfg.logger, offline=wandb_offline(cfg.logger.offline), id=run_id, resume="allow")
    return instantiate(cfg.logger)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Everything `python launch/train.py` (or `python -m zsnr.train`) does; returns the run directory and the last checkpoint."""
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen EMA copy
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    # Cheap checks first: the batch arithmetic and the model files, before any model or data loads.
    world = world_size(cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.accelerator)
    plan = plan_batches(cfg.global_batch_size, cfg.micro_batch_size, world)
    model_spec = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_files(model_spec)
    check_no_run_keys(cfg.data)
    ckpt_path = resolve_resume(cfg.resume, run_dir / "checkpoints")  # named and readable, or an error now
    if cfg.module.get("ema_on_cpu") and "FSDP" in str(cfg.trainer.get("strategy")):
        raise ValueError(EMA_ON_CPU_UNDER_FSDP)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    log.info("%s; precision %s; run directory %s", plan.describe(), precision, run_dir)
    check_run_memory(cfg, precision)
    checkpoint = AtomicCheckpoint(
        run_dir / "checkpoints", cfg.checkpoint.every_n_steps, cfg.checkpoint.keep_last
    )
    callbacks: list[pl.Callback] = [checkpoint]
    if on_slurm():  # sbatch --signal=USR1@90: save, requeue, stop (the handler is in place from here on)
        callbacks.append(SlurmRequeue(checkpoint))

    datamodule = instantiate(
        cfg.data,
        resolution=cfg.model.resolution,
        batch_size=plan.micro_batch_size,
        seed=cfg.seed,
        tokenizer=Tokenizer(),
        latent_signature=encoder_signature(model_spec),  # data.decode=latents: refuses another model's cache
        size_multiple=size_multiple(model_spec),  # data.buckets: bucket sides the model takes as they are
        micro_batches_per_step=plan.accumulate_grad_batches,  # one window of micro-batches per training_step
    )
    wanted = dict(cfg.get("callbacks") or {})
    if (
        "validation" in wanted
        and cfg.validation.every_n_steps
        and not getattr(datamodule, "has_val_data", False)
    ):
        log.warning(
            "no validation loss: the data has no held-out shards. Set data.val_urls=... (shards not in data.urls; "
            "for a latent cache, encoded held-out shards) to log val/loss, or validation.every_n_steps=0 to "
            "silence this"
        )
        del wanted["validation"]
    module = instantiate(cfg.module)
    callbacks += [instantiate(c) for c in wanted.values()]  # configs/callbacks/
    progress_bar = resolve_progress_bar(cfg.trainer.get("enable_progress_bar", "auto"))
    if progress_bar:
        callbacks.append(ProgressBar())
    with multirun_job_scope():  # -m with Lightning-launched ranks: each job's ranks run that job only
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            precision=precision,
            enable_progress_bar=progress_bar,
            max_steps=cfg.max_steps,
            callbacks=callbacks,
            logger=build_logger(cfg),
            default_root_dir=str(run_dir),
            plugins=[*slurm_plugins(), StreamingCheckpointIO()],  # saves without a copy in memory
        )
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except (SIGTERMException, SystemExit) as exn:
            # Lightning stops on SIGTERM with SystemExit(None), i.e. status 0; while the loop waits for a batch
            # the data pipeline raises SystemExit(143) itself (zsnr.data.resume). Either way: one message, 143.
            if not isinstance(exn, SIGTERMException) and exn.code != 128 + signal.SIGTERM:
                raise  # SIGTERMException is a SystemExit too
            log.error(
                "stopped by SIGTERM at step %d (not saved: resume from the last checkpoint)",
                trainer.global_step,
            )
            raise SystemExit(128 + signal.SIGTERM) from exn
        finally:
            finish_wandb(trainer)
        wait_for_launched_ranks(trainer)
    last = run_dir / "checkpoints" / "last.ckpt"
    return {
        "run_dir": run_dir,
        "last_checkpoint": last.resolve() if last.exists() else None,
        "trainer": trainer,
    }


def _config_dir_named(argv: list[str]) -> bool:
    return any(a in ("-cd", "--config-dir") or a.startswith("--config-dir=") for a in argv)


@hydra.main(version_base="1.3", config_path=None, config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    if not _config_dir_named(sys.argv[1:]):
        sys.exit(
            "python -m zsnr.train needs the configs folder: --config-dir PATH/TO/configs (the repository's)"
        )
    main()
