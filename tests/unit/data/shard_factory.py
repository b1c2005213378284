"""Build small shards by hand for the data tests: good LAION samples and every kind of broken one."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image

PASSING = {
    "original_width": 800,
    "original_height": 600,
    "punsafe": 0.01,
    "pwatermark": 0.1,
    "aesthetic": 5.5,
}


def image_bytes(width: int, height: int, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A smooth random picture (photo-like for JPEG: low-res noise scaled up)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def laion_sample(
    key: str, caption: str = "a photo", seed: int = 0, **meta_override
) -> list[tuple[str, bytes]]:
    meta = {**PASSING, **meta_override, "caption": caption}
    meta = {k: v for k, v in meta.items() if v is not None}
    return [
        (f"{key}.jpg", image_bytes(40, 30, seed)),
        (f"{key}.json", json.dumps(meta).encode()),
        (f"{key}.txt", caption.encode()),
    ]


def write_tar(path: str, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def member_offsets(path: str) -> dict[str, int]:
    """Byte offset of each member's data in a tar (to cut a shard in the middle of a chosen member)."""
    with tarfile.open(path) as tar:
        return {m.name: m.offset_data for m in tar.getmembers()}


def read_keys_and_meta(url: str) -> list[tuple[str, dict]]:
    """(key, json) of every sample in a shard, read with tarfile alone (independent of zsnr.data)."""
    out = []
    with tarfile.open(url) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".json"):
                out.append((m.name.split(".")[0], json.loads(tar.extractfile(m).read())))
    return out


def passes_sd2_filters(meta: dict) -> bool:
    """SD 2's LAION filters written out plainly (missing fields reject)."""
    try:
        return (
            bool(meta.get("caption", "").strip())
            and meta["original_width"] >= 512
            and meta["original_height"] >= 512
            and meta["punsafe"] < 0.1
            and meta["pwatermark"] < 0.5
            and meta["aesthetic"] >= 4.5
        )
    except KeyError:
        return False
