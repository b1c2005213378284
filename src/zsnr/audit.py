"""Audit a diffusers model's noise schedule for the paper's flaws.

    python -m zsnr.audit PATH [--json] [--strict]

PATH is a diffusers model folder (with scheduler/scheduler_config.json), a scheduler folder, a
scheduler_config.json, or an original-layout single file (.safetensors / .ckpt: the schedule from the .yaml
beside it, else from its `v_pred` / `ztsnr` marker keys, else SD 2.x's; zsnr.diffusers_interop). The configured
scheduler class is instantiated from the config (offline, no weights)
and asked what it would do: its betas give SNR(T) and sqrt(abar_T), and `set_timesteps(S)` gives the first
timestep it samples at S = 10, 25, 50, with diffusers' own spacing rules and `steps_offset` (which differ
per scheduler class: DDIM "leading" + steps_offset=1 starts at 901, DPM-Solver "linspace" at 999). Those
are set beside zsnr.diffusion's `select_timesteps` for the same spacing name. The report then lists which
of the paper's flaws the configuration has and the fix for each.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from zsnr.diffusion import SPACINGS, alphas_cumprod, select_timesteps, snr

STEPS = (10, 25, 50)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
PHI = 0.7  # the paper's guidance rescale


@dataclass
class Finding:
    flaw: str
    evidence: str
    fix: str


@dataclass
class Audit:
    source: str
    scheduler_class: str
    num_train_timesteps: int
    prediction_type: str
    timestep_spacing: str | None
    steps_offset: int
    rescale_betas_zero_snr: bool
    terminal_snr: float
    sqrt_abar_T: float
    first_timestep: dict[int, float]  # what the diffusers scheduler samples first, per S
    zsnr_first_timestep: dict[int, int | None]  # zsnr.diffusion.select_timesteps, same spacing name
    flaws: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def starts_at_T(self) -> bool:
        return all(t >= self.num_train_timesteps - 1 for t in self.first_timestep.values())


def find_scheduler_config(path: str | Path) -> Path:
    """The scheduler_config.json that PATH is or holds."""
    path = Path(path).expanduser()
    candidates = [path] if path.is_file() else [path / "scheduler" / "scheduler_config.json"]
    candidates += [path / "scheduler_config.json"] if path.is_dir() else []
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no scheduler config at {path}: give a diffusers model folder (with scheduler/scheduler_config.json), "
        "a scheduler folder, or the scheduler_config.json itself"
    )


def load_scheduler(config: dict):
    """Instantiate the config's `_class_name` from diffusers (any class with betas, e.g. DDIM, PNDM, Euler)."""
    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(
            f"scheduler_config.json names _class_name={name!r}, which is not a diffusers {diffusers.__version__} "
            "scheduler class; fix the config's _class_name (e.g. DDIMScheduler)"
        )
    scheduler = cls.from_config(config)
    if not hasattr(scheduler, "betas"):
        raise ValueError(
            f"{name} has no discrete betas (not a DDPM-style variance-preserving schedule); the audit covers "
            "schedulers with betas (DDIM, DDPM, PNDM, Euler, DPM-Solver, UniPC, ...)"
        )
    return scheduler


def first_timesteps(scheduler, steps: tuple[int, ...] = STEPS) -> dict[int, float]:
    out = {}
    for s in steps:
        scheduler.set_timesteps(s)
        out[s] = float(scheduler.timesteps[0])
    return out


def audit(path: str | Path) -> Audit:
    path = Path(path).expanduser()
    if path.suffix in SINGLE_FILE_SUFFIXES:
        from zsnr.diffusers_interop import scheduler_config  # only for single files

        if not path.is_file():
            raise FileNotFoundError(f"no single-file checkpoint at {path}")
        config, origin = scheduler_config(path)
        source = str(path)
    else:
        config_path = find_scheduler_config(path)
        config, origin, source = json.loads(config_path.read_text()), [], str(config_path)
    scheduler = load_scheduler(config)
    cfg = scheduler.config
    T = int(cfg.num_train_timesteps)
    abar = alphas_cumprod(scheduler.betas)  # float64 from the scheduler's own betas
    spacing = cfg.get("timestep_spacing")
    report = Audit(
        source=source,
        scheduler_class=type(scheduler).__name__,
        num_train_timesteps=T,
        prediction_type=str(cfg.get("prediction_type", "epsilon")),
        timestep_spacing=spacing,
        steps_offset=int(cfg.get("steps_offset", 0)),
        rescale_betas_zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)),
        terminal_snr=float(snr(abar)[-1]),
        sqrt_abar_T=float(abar[-1].sqrt()),
        first_timestep=first_timesteps(scheduler),
        zsnr_first_timestep={
            s: int(select_timesteps(T, s, spacing)[0]) if spacing in SPACINGS else None for s in STEPS
        },
    )
    report.flaws = find_flaws(report)
    report.notes = origin + find_notes(report, scheduler, abar)
    return report


def find_flaws(a: Audit) -> list[Finding]:
    flaws = []
    zero_snr = a.terminal_snr == 0.0
    if not zero_snr:
        flaws.append(
            Finding(
                "1. non-zero terminal SNR",
                f"SNR(T) = {a.terminal_snr:.6e}, sqrt(abar_T) = {a.sqrt_abar_T:.6f}: the last training input "
                "keeps the image's mean, so the model cannot make very dark or very bright images",
                "rescale the schedule to SNR(T) = 0 (Algorithm 1: zsnr.diffusion.rescale_zero_terminal_snr; "
                "diffusers: rescale_betas_zero_snr=True) and fine-tune with it: the flag alone does not fix a "
                "model trained without it",
            )
        )
    if a.prediction_type == "epsilon":
        evidence = "prediction_type = epsilon"
        if zero_snr:
            evidence += ": at SNR(T) = 0 the input is pure noise, eps is trivial and x0 cannot be recovered"
        flaws.append(
            Finding(
                "2. epsilon prediction",
                evidence,
                "train with v-prediction and the v-loss (prediction_type='v_prediction'); this needs fine-tuning",
            )
        )
    if not a.starts_at_T:
        firsts = ", ".join(f"S={s}: {t:g}" for s, t in a.first_timestep.items())
        flaws.append(
            Finding(
                "3. sampling does not start at t = T",
                f"timestep_spacing = {a.timestep_spacing}, steps_offset = {a.steps_offset}; first timestep {firsts} "
                f"(T - 1 = {a.num_train_timesteps - 1})",
                "timestep_spacing='trailing' (zsnr: select_timesteps(T, S, 'trailing')); no retraining needed",
            )
        )
    return flaws


def find_notes(a: Audit, scheduler, abar: torch.Tensor) -> list[str]:
    notes = []
    if a.terminal_snr == 0.0:
        notes.append(
            f"4. rescaled CFG: with SNR(T) = 0, plain classifier-free guidance overexposes; sample with "
            f"guidance rescale phi = {PHI} (diffusers: pipe(..., guidance_rescale={PHI}); zsnr: cfg(..., rescale={PHI}))"
        )
    sampled = getattr(scheduler, "alphas_cumprod", None)
    if a.terminal_snr == 0.0 and sampled is not None and float(sampled[-1]) > 0:
        notes.append(
            f"{a.scheduler_class} samples with abar_T = {float(sampled[-1]):.3g} instead of 0 (diffusers keeps sigma "
            "finite for sigma-space solvers); harmless in practice"
        )
    differ = {s: (t, a.zsnr_first_timestep[s]) for s, t in a.first_timestep.items()}
    differ = {s: p for s, p in differ.items() if p[1] is not None and p[0] != p[1]}
    if differ:
        pairs = ", ".join(f"S={s}: {d:g} vs {z}" for s, (d, z) in differ.items())
        notes.append(
            f"diffusers' {a.scheduler_class} reads timestep_spacing={a.timestep_spacing!r} differently from the "
            f"paper's Table 2 (zsnr.diffusion.select_timesteps): first timestep {pairs}"
            + (f" (steps_offset={a.steps_offset} shifts diffusers' steps)" if a.steps_offset else "")
        )
    if scheduler.config.get("clip_sample", False):
        notes.append(
            "clip_sample=True clips the x0 prediction to +-clip_sample_range, which truncates SD latents; "
            "set clip_sample=False"
        )
    if a.scheduler_class == "DDIMScheduler" and not scheduler.config.get("set_alpha_to_one", True):
        notes.append(
            f"set_alpha_to_one=False: DDIM's last step lands on abar = {float(abar[0]):.5f} instead of 1 (x0); "
            "zsnr's samplers land on x0 (set_alpha_to_one=True matches them)"
        )
    return notes


def format_audit(a: Audit) -> str:
    lines = [
        f"# Schedule audit: {a.source}",
        "",
        f"scheduler           {a.scheduler_class}",
        f"T                   {a.num_train_timesteps}",
        f"prediction type     {a.prediction_type}",
        f"timestep spacing    {a.timestep_spacing} (steps_offset {a.steps_offset})",
        f"rescale to zero SNR {a.rescale_betas_zero_snr}",
        f"SNR(T)              {a.terminal_snr:.6e}",
        f"sqrt(abar_T)        {a.sqrt_abar_T:.6f}",
        "",
        "| S | first timestep (diffusers) | zsnr, same spacing | zsnr, trailing |",
        "|---|---|---|---|",
    ]
    for s, t in a.first_timestep.items():
        z = a.zsnr_first_timestep[s]
        trailing = int(select_timesteps(a.num_train_timesteps, s, "trailing")[0])
        lines.append(f"| {s} | {t:g} | {'-' if z is None else z} | {trailing} |")
    lines += ["", f"## Flaws ({len(a.flaws)})" if a.flaws else "## Flaws: none of the paper's flaws"]
    for f in a.flaws:
        lines += ["", f"- {f.flaw}", f"  evidence: {f.evidence}", f"  fix: {f.fix}"]
    if a.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in a.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Audit a diffusers noise schedule for the paper's flaws.")
    p.add_argument("path", help="diffusers folder, scheduler folder, scheduler_config.json, or single file")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a flaw is found")
    args = p.parse_args(argv)
    try:
        result = audit(args.path)
    except (FileNotFoundError, ValueError) as err:
        print(f"zsnr.audit: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**asdict(result), "starts_at_T": result.starts_at_T}, indent=2))
    else:
        print(format_audit(result))
    return 1 if args.strict and result.flaws else 0


if __name__ == "__main__":
    sys.exit(main())
