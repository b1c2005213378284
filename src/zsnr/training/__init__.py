"""Training: the LightningModule, EMA, callbacks, batch arithmetic and checkpoints. (`load_for_inference` and
`InferenceModel` live in zsnr.sampling, which reads checkpoints without Lightning; they are named here too.)"""

from zsnr.sampling import InferenceModel, load_for_inference
from zsnr.training.batching import BatchPlan, plan_batches, world_size
from zsnr.training.callbacks import DataStatsLogger, SampleGrid, TrainMetrics
from zsnr.training.checkpointing import (
    AtomicCheckpoint,
    StreamingCheckpointIO,
    newest_checkpoint,
    resolve_resume,
)
from zsnr.training.ema import EMASchedule, ema_decay, ema_update_, window_decay
from zsnr.training.module import DiffusionModule
from zsnr.training.validation import ValidationLoss, fixed_timesteps

__all__ = [
    "AtomicCheckpoint",
    "BatchPlan",
    "DataStatsLogger",
    "DiffusionModule",
    "EMASchedule",
    "InferenceModel",
    "SampleGrid",
    "StreamingCheckpointIO",
    "TrainMetrics",
    "ValidationLoss",
    "ema_decay",
    "ema_update_",
    "window_decay",
    "fixed_timesteps",
    "load_for_inference",
    "newest_checkpoint",
    "plan_batches",
    "resolve_resume",
    "world_size",
]
