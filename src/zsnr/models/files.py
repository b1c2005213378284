"""Local model files: every weight comes from a path on disk, never from the network.

A missing file fails at start-up with a message naming what to download and where to put it.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _missing(path: Path, what: str, download: str, kind: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what}: no {kind} at {path}. zsnr never downloads weights. On a machine with internet, download "
        f"{download}, copy it to {path} (or point the config at where it is), and run again."
    )


def require_file(path: str | Path, what: str, download: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(path, what, download, "file")
    return path


def require_dir(path: str | Path, what: str, download: str, must_contain: tuple[str, ...] = ()) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise _missing(path, what, download, "folder")
    absent = [name for name in must_contain if not (path / name).exists()]
    if absent:
        raise FileNotFoundError(
            f"{what}: the folder {path} exists but lacks {absent}; it should be a complete copy of {download}."
        )
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat tensor dict from `.safetensors`, or a torch file loaded with `weights_only=True`.

    Lightning-style files keep the weights under "state_dict"; that level is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickles with arbitrary objects are refused on purpose
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True) ({err.__class__.__name__}: {err}). "
            "zsnr does not unpickle arbitrary objects; use the .safetensors release of the same weights."
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state
