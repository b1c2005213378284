"""zsnr.diffusion: the paper's four fixes as small pure-torch functions.

Imports torch only (no Lightning, Hydra or diffusers), so it can be lifted into any codebase.
"""

from .guidance import cfg
from .losses import WEIGHTINGS, loss_weights
from .parameterization import PREDICTION_TYPES, add_noise, convert, predict_x0_eps, v_target
from .samplers import SAMPLERS, img2img, sample
from .schedules import SCHEDULES, alphas_cumprod, make_betas, rescale_zero_terminal_snr, shift_snr, snr
from .spacing import SPACINGS, select_timesteps

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "WEIGHTINGS",
    "add_noise",
    "alphas_cumprod",
    "cfg",
    "convert",
    "img2img",
    "loss_weights",
    "make_betas",
    "predict_x0_eps",
    "rescale_zero_terminal_snr",
    "sample",
    "select_timesteps",
    "shift_snr",
    "snr",
    "v_target",
]
