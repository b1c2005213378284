"""Sampling: one setup (zsnr.sampling.setup's `prepare`) behind text-to-image, image-to-image, `generate` and
the x0 trajectory of zsnr.experiments.paper_measures, one owner of the settings (`SamplingSettings`), and the
loading of a training checkpoint for sampling, evaluation or export (`load_for_inference`)."""

from zsnr.sampling.inference import InferenceModel, load_for_inference
from zsnr.sampling.pipelines import generate, image_to_image, read_prompts, text_to_image
from zsnr.sampling.settings import DTYPES, SamplingSettings, autocast, resolve_device, resolve_dtype
from zsnr.sampling.setup import (
    Setup,
    decode_images,
    image_generators,
    initial_noise,
    latent_shape,
    mean_brightness,
    prepare,
    prompt_states,
)

__all__ = [
    "DTYPES",
    "InferenceModel",
    "SamplingSettings",
    "Setup",
    "autocast",
    "decode_images",
    "generate",
    "image_generators",
    "image_to_image",
    "initial_noise",
    "latent_shape",
    "load_for_inference",
    "mean_brightness",
    "prepare",
    "prompt_states",
    "read_prompts",
    "resolve_device",
    "resolve_dtype",
    "text_to_image",
]
