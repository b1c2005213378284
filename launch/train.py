"""Train (fine-tune) a Stable Diffusion UNet: `python launch/train.py [overrides]`. See configs/train.yaml.

The body is zsnr.train.train (`python -m zsnr.train --config-dir configs` runs the same without this script).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from zsnr.train import train

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
