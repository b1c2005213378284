"""How to sample: one `SamplingSettings` is everything the sampling code reads (sampler, steps, spacing,
guidance, negative prompt, compute dtype), from a config (`from_options`) or a model's schedule
(`for_schedule`, whose sampler, spacing and phi are what the model was trained for)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from zsnr.diffusion import SAMPLERS, SPACINGS, select_timesteps
from zsnr.models.schedule import Schedule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str) -> str:
    """The compute dtype's name (a DTYPES key) for a config value: "auto" is bfloat16 on CUDA (tensor cores;
    float32's exponent range, so nothing overflows in the VAE) and float32 elsewhere (bf16 autocast ran ~10x
    slower than float32 on the tiny model on a CPU without bf16 units)."""
    if name == "auto":
        return "bfloat16" if torch.device(device).type == "cuda" else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return name


def resolve_device(device: str) -> torch.device:
    """The torch device for a config value; "auto" is the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """torch.autocast to `dtype` on `device`'s type; float32 turns it off (and any autocast around it)."""
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
        yield


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str = Schedule.sampler  # the sampler, spacing and phi defaults are the schedule's (fixes 3, 4)
    num_steps: int = 50
    spacing: str = Schedule.spacing
    eta: float | None = None  # None: the sampler's default (0 for ddim, 1 for euler_ancestral)
    guidance_scale: float = 7.5  # w; 1 turns classifier-free guidance off
    guidance_rescale: float = Schedule.guidance_rescale  # phi (Algorithm 2); 0 is plain CFG
    negative_prompt: str = ""
    dtype: str = "float32"  # the networks' compute dtype: float32, or bfloat16 / float16 autocast
    start_timestep: int | None = None  # cap on the first timestep (select_timesteps' start)

    def __post_init__(self) -> None:
        """Fail on a bad option before any model loads."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance.rescale (phi) must be in [0, 1], got {self.guidance_rescale}")
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype must be one of {sorted(DTYPES)} (or auto in a config), got {self.dtype!r}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def timesteps(self, schedule: Schedule) -> torch.Tensor:
        """The descending timesteps of `schedule` these settings visit."""
        return select_timesteps(schedule.num_timesteps, self.num_steps, self.spacing, self.start_timestep)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_schedule(cls, schedule: Schedule, **overrides: Any) -> SamplingSettings:
        """Settings for a model trained with `schedule`: its sampler, spacing and phi unless `overrides` name
        them; an override of None keeps the default. `dtype` may be given as a torch dtype."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; valid: {sorted(names)}")
        values = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(values.get("dtype"), torch.dtype):
            values["dtype"] = {v: k for k, v in DTYPES.items()}[values["dtype"]]
        own = {
            "sampler": schedule.sampler,
            "spacing": schedule.spacing,
            "guidance_rescale": schedule.guidance_rescale,
        }
        return cls(**(own | values))

    @classmethod
    def from_options(cls, options: Mapping[str, Any], device: torch.device | str) -> SamplingSettings:
        """From configs/sample.yaml's and configs/evaluate.yaml's keys (guidance.scale / guidance.rescale);
        dtype "auto" becomes bfloat16 on CUDA, float32 elsewhere (what `device` is)."""
        return cls(
            sampler=options["sampler"],
            num_steps=int(options["num_steps"]),
            spacing=options["spacing"],
            eta=options["eta"],
            guidance_scale=float(options["guidance"]["scale"]),
            guidance_rescale=float(options["guidance"]["rescale"]),
            negative_prompt=options["negative_prompt"],
            dtype=resolve_dtype(options["dtype"], device),
        )
