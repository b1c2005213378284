"""CLIP score (Hessel et al. 2021, as torchmetrics defines it): 100 * max(cos(E_image, E_text), 0), averaged.

The CLIP model is an OpenCLIP model with weights from a local file (never downloaded); tests pass a tiny
model built in the test. Any object with `encode_image(pixels)` and `encode_text(token_ids)` works.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zsnr.models.files import require_file

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPScore:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        image_size: int = 224,
        mean: tuple[float, ...] = OPENAI_MEAN,
        std: tuple[float, ...] = OPENAI_STD,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> CLIP's input: shorter side resized (bicubic) to image_size, center crop,
        [0, 1], normalised with the model's mean and std (open_clip's eval transform)."""
        x = images.float() / 255.0
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        if (h, w) != (self.image_size, self.image_size):
            size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            top, left = (x.shape[-2] - self.image_size) // 2, (x.shape[-1] - self.image_size) // 2
            x = x[..., top : top + self.image_size, left : left + self.image_size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def per_image(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """100 * max(cos, 0) for each (image, caption) pair, float64 [N]."""
        if len(captions) != images.shape[0]:
            raise ValueError(
                f"CLIP score needs one caption per image: {images.shape[0]} images, {len(captions)} captions"
            )
        device = next(self.model.parameters(), torch.empty(0)).device
        img = self.model.encode_image(self.preprocess(images).to(device)).double()
        txt = self.model.encode_text(self.tokenizer(list(captions)).to(device)).double()
        cos = F.cosine_similarity(img, txt, dim=-1)
        return (100.0 * cos.clamp_min(0.0)).cpu()


def load_open_clip_score(
    model_name: str, weights: str | Path, device: str | torch.device = "cpu"
) -> CLIPScore:
    """An OpenCLIP model (e.g. "ViT-H-14", "ViT-L-14") with weights from a local file."""
    import open_clip

    path = require_file(
        weights,
        what=f"the OpenCLIP {model_name} weights for the CLIP score",
        download=f"open_clip_pytorch_model.bin (or .safetensors) of an OpenCLIP {model_name} release "
        "(e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K on the Hugging Face hub)",
    )
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown OpenCLIP model {model_name!r}; valid names: open_clip.list_models()")
    model = open_clip.create_model(model_name, pretrained=str(path), device=device, require_pretrained=True)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return CLIPScore(model, open_clip.get_tokenizer(model_name), size, tuple(cfg["mean"]), tuple(cfg["std"]))
