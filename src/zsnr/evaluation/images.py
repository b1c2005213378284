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


def make_grid(images: torch.Tensor, columns: int, padding: int = 2, fill: int = 255) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> one uint8 [3, H', W'] image, row-major, `columns` per row, padding of grey `fill`."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.full(
        (c, rows * (h + padding) + padding, columns * (w + padding) + padding), fill, dtype=torch.uint8
    )
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def labelled_grid(
    rows: dict[str, torch.Tensor],
    columns: int,
    scale: int = 4,
    label_width: int = 330,
    captions: dict[str, str] | None = None,
) -> torch.Tensor:
    """One row per entry (its first `columns` uint8 images [N, 3, H, W]), each image enlarged `scale` times
    with nearest-neighbour (pixels stay pixels), the row's name and an optional caption written on its left.
    Dark grey padding, so that black and white images both stand out from it."""
    from PIL import ImageDraw, ImageFont

    grids = []
    for images in rows.values():
        big = images[:columns].repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        grids.append(make_grid(big, columns=columns, padding=3, fill=90))
    width = label_width + max(g.shape[2] for g in grids)
    canvas = Image.new("RGB", (width, sum(g.shape[1] for g in grids)), "white")
    draw = ImageDraw.Draw(canvas)
    name_font, caption_font = ImageFont.load_default(size=20), ImageFont.load_default(size=14)
    top = 0
    for (name, _), grid in zip(rows.items(), grids, strict=True):
        canvas.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (label_width, top))
        draw.text((8, top + 10), name, fill="black", font=name_font)
        if captions and captions.get(name):
            draw.multiline_text(
                (8, top + 40), captions[name], fill=(70, 70, 70), font=caption_font, spacing=3
            )
        top += grid.shape[1]
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)
