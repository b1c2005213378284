"""Images as the metrics see them: uint8 [N, 3, H, W] (what a PNG holds), PNG files, folders, grids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 [0, 255] (rounded, clamped): the values a saved PNG holds."""
    return ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """One uint8 [3, H, W] image to a PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


def load_png(path: str | Path, resolution: int | None = None) -> torch.Tensor:
    """An image file as uint8 [3, H, W]; with `resolution`, center-cropped to a square and resized (bicubic),
    the usual preparation of a reference set (e.g. COCO) for FID against square samples."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if resolution is not None:
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            if s != resolution:
                im = im.resize((resolution, resolution), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted; a clear error when there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist; point it at a folder of PNG/JPEG files"
        )
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def iterate_batches(
    files: list[Path], batch_size: int, resolution: int | None = None
) -> Iterator[torch.Tensor]:
    """uint8 batches [B, 3, H, W] of the files, in order."""
    for i in range(0, len(files), batch_size):
        yield torch.stack([load_png(f, resolution) for f in files[i : i + batch_size]])


def make_grid(images: torch.Tensor, columns: int, padding: int = 2) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> one uint8 [3, H', W'] image, row-major, `columns` per row, white padding."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.full(
        (c, rows * (h + padding) + padding, columns * (w + padding) + padding), 255, dtype=torch.uint8
    )
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid
