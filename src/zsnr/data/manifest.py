"""Your own images as shards: a folder with sidecar captions, or a CSV/parquet manifest (launch/make_shards.py).

Images are stored as they are (no re-encoding); the json gets the original size read from the image header
(so the size filter works) plus any LAION fields the manifest has (punsafe, pwatermark, aesthetic, ...).
Keys are running numbers: webdataset splits a member name at its first dot, so file names cannot be keys.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from PIL import Image

from zsnr.data.shards import brace_pattern, write_shards

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
PATH_COLUMNS = ("path", "image", "file", "filepath")
CAPTION_COLUMNS = ("caption", "text", "txt")


def image_sample(key: str, path: str, caption: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One webdataset sample from an image file: its bytes, caption and json metadata."""
    ext = IMAGE_SUFFIXES.get(os.path.splitext(path)[1].lower())
    if ext is None:
        raise ValueError(f"{path}: not a supported image type (use one of {sorted(IMAGE_SUFFIXES)})")
    with Image.open(path) as image:  # reads the header only
        width, height = image.size
    meta = {"original_width": width, "original_height": height, **(extra or {})}
    meta.update(caption=caption, source_path=path, key=key)
    with open(path, "rb") as f:
        data = f.read()
    return {"__key__": key, ext: data, "txt": caption, "json": json.dumps(meta)}


def folder_samples(folder: str) -> Iterator[dict[str, Any]]:
    """Images under `folder` (recursively, sorted), each with a sidecar caption `<name>.txt` (UTF-8).

    A sidecar `<name>.json` object, if present, is merged into the metadata (LAION fields).
    """
    paths = sorted(
        os.path.join(d, f)
        for d, _, files in os.walk(folder)
        for f in files
        if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise FileNotFoundError(f"no images ({sorted(IMAGE_SUFFIXES)}) under {folder!r}")
    for i, path in enumerate(paths):
        stem = os.path.splitext(path)[0]
        if not os.path.exists(stem + ".txt"):
            raise FileNotFoundError(f"{path} has no caption file {stem}.txt next to it")
        with open(stem + ".txt", encoding="utf-8") as f:
            caption = f.read().strip()
        extra = {}
        if os.path.exists(stem + ".json"):
            with open(stem + ".json", encoding="utf-8") as f:
                extra = json.load(f)
        yield image_sample(f"{i:09d}", path, caption, extra)


def _number(value: Any) -> Any:
    """CSV cells are strings: give numeric LAION fields back their numbers, blanks become None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def manifest_rows(manifest: str) -> list[dict[str, Any]]:
    if manifest.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                f"reading {manifest} needs pyarrow: pip install pyarrow (or use a CSV)"
            ) from None
        return pq.read_table(manifest).to_pylist()
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def manifest_samples(manifest: str) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/parquet manifest: a path column, a caption column, any other columns go to the json.

    Relative paths are taken relative to the manifest's folder.
    """
    rows = manifest_rows(manifest)
    if not rows:
        raise ValueError(f"manifest {manifest} has no rows")
    columns = list(rows[0])
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if path_col is None or caption_col is None:
        raise ValueError(
            f"manifest {manifest} needs a path column (one of {PATH_COLUMNS}) and a caption column "
            f"(one of {CAPTION_COLUMNS}); it has {columns}"
        )
    base = os.path.dirname(os.path.abspath(manifest))
    for i, row in enumerate(rows):
        path = os.path.join(base, str(row[path_col]))
        extra = {k: _number(v) for k, v in row.items() if k not in (path_col, caption_col)}
        yield image_sample(
            f"{i:09d}",
            path,
            str(row[caption_col] or "").strip(),
            {k: v for k, v in extra.items() if v is not None},
        )


def make_shards(source: str, out_dir: str, samples_per_shard: int = 10000, prefix: str = "shard") -> str:
    """Folder or manifest -> out_dir/<prefix>-NNNNNN.tar; returns the brace URL pattern for data.urls."""
    samples = folder_samples(source) if os.path.isdir(source) else manifest_samples(source)
    total = None if os.path.isdir(source) else len(manifest_rows(source))
    paths = write_shards(samples, os.path.join(out_dir, f"{prefix}-%06d.tar"), samples_per_shard, total=total)
    if not paths:
        raise ValueError(f"nothing was written from {source}")
    return brace_pattern(paths)
