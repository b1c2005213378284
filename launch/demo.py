"""The paper in miniature: `python launch/demo.py` (what `make demo` runs). See configs/demo.yaml.

Makes the synthetic shards, pretrains one flawed base model (reused when already trained), fine-tunes it as
`flawed` and `fixed` for each seed (`python -m zsnr.train` with these configs), samples every model with the
same seeds, and writes outputs/demo/report.md, metrics.json, histograms and labelled grids. The body is
zsnr.experiments.demo.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from zsnr.experiments.demo import demo

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(config_path=CONFIGS, config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    demo(cfg, CONFIGS)


if __name__ == "__main__":
    main()
