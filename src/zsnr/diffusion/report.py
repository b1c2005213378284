"""The paper's Table 1 and Figure 2 as a command.

    python -m zsnr.diffusion.report [-T 1000] [-S 10] [--plot schedules.png]

Prints SNR(T) and sqrt(abar_T) for each schedule before and after the zero-terminal-SNR rescale, the
timesteps each spacing selects, and with --plot draws logSNR(t) and sqrt(abar_t), original vs rescaled.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .schedules import alphas_cumprod, make_betas, rescale_zero_terminal_snr, snr
from .spacing import SPACINGS, select_timesteps

TABLE1_SCHEDULES = ("linear", "cosine", "scaled_linear")


def schedule_pairs(num_timesteps: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (abar original, abar with SNR(T) = 0)}; cosine's fix is dropping its clip (cosine_unclipped)."""
    out = {}
    for kind in TABLE1_SCHEDULES:
        betas = make_betas(kind, num_timesteps)
        fixed = (
            make_betas("cosine_unclipped", num_timesteps)
            if kind == "cosine"
            else rescale_zero_terminal_snr(betas)
        )
        out[kind] = (alphas_cumprod(betas), alphas_cumprod(fixed))
    return out


def format_report(num_timesteps: int = 1000, num_steps: int = 10) -> str:
    lines = [f"Terminal SNR, T = {num_timesteps} (paper's Table 1)", ""]
    lines.append("| schedule | SNR(T) | sqrt(abar_T) | SNR(T) fixed | sqrt(abar_T) fixed |")
    lines.append("|---|---|---|---|---|")
    for kind, (a, r) in schedule_pairs(num_timesteps).items():
        lines.append(
            f"| {kind} | {snr(a)[-1].item():.6e} | {a[-1].sqrt().item():.6f} "
            f"| {snr(r)[-1].item():.1e} | {r[-1].sqrt().item():.6f} |"
        )
    lines += [
        "",
        f"Timesteps, T = {num_timesteps}, S = {num_steps} (paper's Table 2, 0-based, descending)",
        "",
    ]
    for spacing in SPACINGS:
        ts = select_timesteps(num_timesteps, num_steps, spacing).tolist()
        note = (
            "starts at T" if ts[0] == num_timesteps - 1 else f"never visits t = {num_timesteps - 1}: flawed"
        )
        lines.append(f"{spacing:>9}: {' '.join(map(str, ts))}   ({note})")
    return "\n".join(lines)


def plot(path: str, num_timesteps: int = 1000) -> None:
    """Figure 2: logSNR(t) and sqrt(abar_t), original (solid) vs zero-terminal-SNR (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.arange(1, num_timesteps + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (kind, (a, r)) in enumerate(schedule_pairs(num_timesteps).items()):
        color = f"C{i}"
        ax1.plot(t, snr(a).log(), color=color, label=f"{kind}")
        ax1.plot(t, snr(r).log(), color=color, ls="--", label=f"{kind}, SNR(T)=0")
        ax2.plot(t, a.sqrt(), color=color, label=kind)
        ax2.plot(t, r.sqrt(), color=color, ls="--", label=f"{kind}, SNR(T)=0")
    ax1.set(xlabel="t", ylabel="log SNR(t)", title="log SNR (-inf at t = T when fixed)")
    ax2.set(xlabel="t", ylabel="sqrt(abar_t)", title="sqrt(abar_t)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-T", "--num-timesteps", type=int, default=1000)
    p.add_argument("-S", "--num-steps", type=int, default=10)
    p.add_argument("--plot", metavar="FILE", help="also draw Figure 2 (logSNR and sqrt(abar)) to FILE")
    args = p.parse_args(argv)
    print(format_report(args.num_timesteps, args.num_steps))
    if args.plot:
        plot(args.plot, args.num_timesteps)
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
