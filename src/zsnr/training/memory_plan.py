"""How much memory a training step needs per device, before any weight is loaded: `launch/plan_memory.py`.

The step is traced, not run: zsnr.training.step.train_step itself (DiffusionModule's objective per
micro-batch, backward, the gradient norm, clipping, AdamW, the EMA update) on fake tensors (torch's FakeTensorMode: shapes and dtypes, no storage), under PyTorch's memory
tracker (torch.distributed._tools.MemTracker), which attributes every tensor alive at the peak to parameters,
gradients, optimizer state, activations or temporaries. Model parts come from configs only (a diffusers folder's
config.json files, or SD 2.1's published layout), so SD 2.1 plans in a minute on a laptop.

What the trace knows and what it assumes:
- bf16-mixed is traced with CPU autocast, made to follow CUDA autocast's rules where they differ for these
  models: GroupNorm and LayerNorm run in float32 on CUDA (`follow_cuda_autocast`; the softmax of
  model.attention=eager, float32 on CUDA too, is left in bf16: such a plan counts its attention maps at half);
- AdamW's moments are allocated before the traced step (steady state, not the first step), and on a GPU the
  optimizer runs its foreach path (what torch picks for CUDA tensors), with its full-size temporaries;
- DDP keeps the gradients allocated between steps (gradient_as_bucket_view: they are views of its buckets);
- FSDP2 over W ranks is a closed form on top of the one-device trace (`_shard`): parameters, gradients, AdamW
  state and EMA divided by W, plus the largest block gathered twice (computing and prefetched), its unsharded
  gradients and their reduce-scatter input;
- not counted: the CUDA context and kernels (about 0.5-1 GiB), allocator fragmentation (plan 5-10% of the
  peak), communication buffers, compiled graphs. `fits` leaves `headroom` of the device for them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zsnr.models.components import weightless_components

GIB = 2**30
STRATEGIES = ("single", "ddp", "fsdp")
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def follow_cuda_autocast(*modules: nn.Module) -> list:
    """Make the GroupNorm and LayerNorm layers of `modules` run in float32 under CPU autocast, as CUDA autocast
    runs them (their outputs, hence the activations they save, are then float32 as on a GPU; CPU autocast keeps
    them in the input's dtype). Forward pre-hooks, so gradient checkpointing's recomputation follows the same
    rule. Returns the hook handles."""

    def upcast(module: nn.Module, args: tuple) -> tuple | None:
        if not torch.is_autocast_enabled("cpu"):
            return None
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    norms = [m for part in modules for m in part.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    return [m.register_forward_pre_hook(upcast) for m in norms]


@dataclass
class MemoryPlan:
    """Bytes per device at the step's peak, by part, and what the plan was made for."""

    parts: dict[str, int]  # unet, ema, frozen, gradients, adamw, activations (and the batch), temporaries
    phase: str  # where the peak is: "forward / backward" or "optimizer step"
    setup: dict[str, Any]
    host: dict[str, int] = field(default_factory=dict)  # what stays in host memory (ema_on_cpu)
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return sum(self.parts.values())

    def fits(self, device_bytes: int, headroom: float = 0.1) -> bool:
        """Whether the peak fits with `headroom` of the device left (context, fragmentation: see above)."""
        return self.peak <= (1.0 - headroom) * device_bytes

    def table(self) -> str:
        """Markdown, in GiB (MiB when the peak is under 1 GiB)."""
        unit, scale = ("GiB", GIB) if self.peak >= GIB else ("MiB", 2**20)
        rows = [f"| {name} | {b / scale:.2f} |" for name, b in self.parts.items()]
        rows += [
            f"| (host memory, not on the device) {name} | {b / scale:.2f} |" for name, b in self.host.items()
        ]
        peak = f"| **peak, {self.phase}** | **{self.peak / scale:.2f}** |"
        return "\n".join([f"| part | {unit} per device |", "|---|---|", *rows, peak])


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _module_bytes(module: nn.Module) -> int:
    return _bytes([*module.parameters(), *module.buffers()])


def plan_memory(
    model: dict[str, Any],
    diffusion: dict[str, Any],
    micro_batch_size: int,
    precision: str = "32-true",
    strategy: str = "single",
    world_size: int = 1,
    accumulation: int = 1,
    accelerator: str = "gpu",
    latents: bool = False,
    ema_on_cpu: bool = False,
) -> MemoryPlan:
    """Trace one training step (steady state: AdamW's moments exist) of micro-batches of `micro_batch_size`
    and return the per-device memory at its peak. `accelerator` "gpu" plans for CUDA (autocast rules, foreach
    AdamW), "cpu" for a CPU run; `latents`: batches from the latent cache (no VAE encode in the step)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from zsnr.training.module import DiffusionModule
    from zsnr.training.step import Update, train_step

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if micro_batch_size < 1 or world_size < 1 or accumulation < 1:
        raise ValueError(
            f"micro_batch_size, world_size and accumulation must be >= 1, got {micro_batch_size}, "
            f"{world_size}, {accumulation}"
        )
    dtype = PRECISIONS[precision]
    gpu = accelerator != "cpu"
    parts, notes = weightless_components(model)  # on the meta device
    module = DiffusionModule(model, diffusion, components=parts, ema_on_cpu=ema_on_cpu)
    unet, ema = module.unet, module.ema_unet
    frozen = [parts.autoencoder, parts.text_encoder]
    with FakeTensorMode(allow_non_fake_inputs=True):
        for part in (unet, ema, *frozen):
            fake_tensors(part)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, foreach=gpu)
        for p in unet.parameters():  # steady state: the moments exist before the step
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=strategy != "ddp")  # DDP's gradients are views of its buckets
        batch = _fake_batch(module, micro_batch_size, latents)
        for part in frozen:  # MemTracker hooks every parameter that runs forward; these run under no_grad
            part.requires_grad_(True)
        tracker = peak_tracker()
        tracker.track_external(unet, *frozen, optimizer, *([] if ema_on_cpu else [ema]))
        autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
        hooks = follow_cuda_autocast(unet, *frozen) if gpu and dtype is not None else []
        backward_peak = []  # the peak before the optimizer step: which phase the step's peak is in
        optimizer.register_step_pre_hook(
            lambda *_: backward_peak.append(_total(tracker.get_tracker_snapshot("peak")))
        )
        update = Update(list(unet.parameters()), optimizer, ema=None if ema_on_cpu else module.ema)
        # on the host (ema_on_cpu), the EMA update stages 256 MiB chunks there (zsnr.training.ema): not traced
        window = [batch] * min(accumulation, 2)  # the second micro-batch runs with gradients allocated
        with tracker, autocast:
            train_step(update, window, _Objective(module, tracker), _Tracing())
        peak = tracker.get_tracker_snapshot("peak")
        for part in frozen:
            part.requires_grad_(False)
        for hook in hooks:
            hook.remove()
        sizes = {
            "unet": _module_bytes(unet),
            "ema": 0 if ema_on_cpu else _module_bytes(ema),
            "frozen": sum(_module_bytes(p) for p in frozen),
        }
    plan = _breakdown(peak, sizes, _bytes(optimizer_state(optimizer)))
    phase = "optimizer step" if _total(peak) > backward_peak[0] else "forward / backward"
    setup = {"model": model.get("kind"), "resolution": int(model["resolution"]), "micro_batch_size": micro_batch_size,
             "precision": precision, "strategy": strategy, "world_size": world_size, "accumulation": accumulation,
             "accelerator": accelerator, "latents": latents, "ema_on_cpu": ema_on_cpu}  # fmt: skip
    host = {"ema": _module_bytes(module.ema_unet)} if ema_on_cpu else {}
    out = MemoryPlan(plan, phase, setup, host, notes)
    if strategy == "fsdp" and world_size > 1:
        _shard(out, unet, world_size, dtype or torch.float32)
    return out


def _peak_tracker_class():
    from torch.distributed._tools.mem_tracker import MemTracker

    class PeakTracker(MemTracker):
        """MemTracker without its per-module peaks, which cost O(modules) per op (27 of the 32 s of the tiny
        model's trace; far more at SD 2.1's size): the totals and their breakdown at the peak, kept as
        MemTracker._update_peak_stats keeps them."""

        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    return PeakTracker


def peak_tracker():
    return _peak_tracker_class()()  # torch.distributed._tools is imported only when a plan is made


class _Objective(nn.Module):
    """The module's micro-batch loss as one module call: MemTracker takes a second call of a top-level module
    (the text encoder: captions, then the empty caption) for the next iteration. Its per-module statistics
    are per call (the totals are kept), so they are reset before each."""

    def __init__(self, module: nn.Module, tracker: Any) -> None:
        super().__init__()
        self.loss, self.tracker = module.micro_batch_loss, tracker  # not a child: no parameters of its own

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(batch)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        self.tracker.reset_mod_stats()
        return super().__call__(batch)


class _Tracing:
    """train_step's data-parallel side while tracing: one process (DDP's buckets are its gradients, allocated
    before the step as under gradient_as_bucket_view), and every step applied (a fake tensor has no value to
    decide on)."""

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def all_finite(self, bad: torch.Tensor) -> bool:
        return True


def fake_tensors(module: nn.Module) -> None:
    """Meta parameters and buffers -> fake CPU tensors of the same shape, dtype and layout, in place (Module.to
    cannot: it swaps fake tensors, which fails on parameters a module keeps weak references to)."""
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for name, t in store.items():
                if t is not None:
                    fake = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
                    store[name] = nn.Parameter(fake, t.requires_grad) if isinstance(t, nn.Parameter) else fake


def optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def _total(snapshot: dict) -> int:
    return sum(device["Total"] for device in snapshot.values())


def _breakdown(peak: dict, sizes: dict[str, int], adamw: int) -> dict[str, int]:
    """The tracker's categories at the peak: parameters split into UNet / EMA / frozen by their own bytes,
    its optimizer category into AdamW's state and the optimizer's temporaries."""
    totals: dict[str, int] = {}
    for device in peak.values():
        for kind, b in device.items():
            name = str(getattr(kind, "value", kind))
            totals[name] = totals.get(name, 0) + b
    params = totals.get("Parameter", 0) + totals.get("Buffer", 0)
    if params != sum(sizes.values()):
        raise RuntimeError(f"the tracker saw {params} bytes of parameters, the modules hold {sizes}")
    optimizer = totals.get("Optstate", 0)
    if optimizer < adamw:  # the state exists from before the step (steady state) and is tracked throughout
        raise RuntimeError(f"the tracker saw {optimizer} bytes of optimizer memory, AdamW holds {adamw}")
    return {
        **sizes,
        "gradients": totals.get("Gradient", 0),
        "adamw": adamw,
        "activations": totals.get("Activation", 0) + totals.get("Other", 0),  # the forward's, and the batch
        "temporaries": totals.get("Temp", 0) + optimizer - adamw,  # the backward's and the optimizer's
    }


def _shard(plan: MemoryPlan, unet: nn.Module, world: int, compute: torch.dtype) -> None:
    """FSDP2 over `world` ranks (zsnr.training.parallel's plan), in closed form: the UNet, its gradients, AdamW
    state and EMA divided by `world`; added, the largest block's unsharded weights twice (the block computing
    and the one prefetched) and its unsharded gradients in the compute dtype, and the float32 input of its
    gradient reduce-scatter when the compute dtype is narrower."""
    from zsnr.training.parallel import unet_blocks

    for name in ("unet", "ema", "gradients", "adamw"):
        plan.parts[name] = math.ceil(plan.parts[name] / world)
    largest = max(sum(p.numel() for p in block.parameters()) for block in unet_blocks(unet))
    width = torch.tensor([], dtype=compute).element_size()
    plan.parts["unsharded block"] = largest * (3 * width + (4 if width < 4 else 0))
    plan.notes.append(
        f"FSDP2 over {world} ranks, in closed form: sharded parts / {world}, plus the largest block "
        f"({largest / 1e6:.0f}M parameters) gathered twice, its gradients and their reduce-scatter input"
    )


def _fake_batch(module, batch: int, latents: bool) -> dict[str, Any]:
    """A batch as the data pipeline hands it over: uint8 images and token ids, or the latent cache's tensors."""
    size = module.resolution
    if latents:
        ae = module.autoencoder
        shape = (batch, ae.latent_channels, size // ae.downsample, size // ae.downsample)
        width = module.unet.config.cross_attention_dim
        return {"latent_mean": torch.zeros(shape), "latent_std": torch.zeros(shape),
                "text_states": torch.zeros(batch, 77, width), "caption": [""] * batch}  # fmt: skip
    return {"image": torch.zeros(batch, 3, size, size, dtype=torch.uint8), "caption": [""] * batch,
            "input_ids": torch.zeros(batch, 77, dtype=torch.long)}  # fmt: skip
