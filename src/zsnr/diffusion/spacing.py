"""Which S of the T training timesteps a sampler visits (the paper's Table 2), 0-based and descending."""

from __future__ import annotations

import torch

SPACINGS = ("leading", "linspace", "trailing")


def select_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "trailing", start: int | None = None
) -> torch.Tensor:
    """S timesteps out of T, descending, 0-based (the paper counts 1..T; subtract one).

    Table 2 of the paper for T = 1000, S = 10 (1-based):
    - ``leading`` (DDIM, PNDM): arange(1, T + 1, floor(T/S)) -> 1, 101, ..., 901. Never reaches T: flawed.
    - ``linspace`` (iDDPM): round(linspace(1, T, S)) -> 1, 112, 223, ..., 889, 1000.
    - ``trailing`` (DPM-Solver): round(flip(arange(T, 0, -T/S))) -> 100, 200, ..., 1000. Recommended.
    All three hold distinct timesteps for any 1 <= S <= T (each has a step of at least 1).

    ``start`` caps the first timestep (timesteps above it become ``start``; duplicates merge). With zero
    terminal SNR an epsilon-prediction model cannot sample from t = T (section 3 of the paper: x_T carries
    nothing of x0, so eps gives no x0); ``start = T - 2`` is the nearest start it has.
    """
    T, S = num_train_timesteps, num_steps
    if not 1 <= S <= T:
        raise ValueError(f"num_steps must be in 1..{T} (num_train_timesteps), got {S}")
    if spacing == "leading":
        ts = torch.arange(S, dtype=torch.float64) * (T // S)
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, S, dtype=torch.float64).round()
    elif spacing == "trailing":
        # round(arange(T, 0, -T/S)) - 1, written with integer multiples to avoid accumulated float error
        ts = (T - torch.arange(S, dtype=torch.float64) * (T / S)).round() - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    if start is not None:
        if not 0 <= start < T:
            raise ValueError(f"start must be in 0..{T - 1}, got {start}")
        ts = ts.clamp(max=start).unique()
    return ts.to(torch.long).sort(descending=True).values
