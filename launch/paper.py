"""Every claim of the paper, measured in miniature: `python launch/paper.py` (what `make paper` runs).

Runs `make demo` first (its base and two fine-tunes are reused when already trained), then fine-tunes the
one-fix-removed arms and offset noise from the same base, samples every model with the same seeds, and writes
outputs/paper/report.md (a claims table first), metrics.json and the figures. See configs/paper_report.yaml;
the body is zsnr.experiments.paper.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra import compose
from omegaconf import DictConfig

from zsnr.experiments.paper import paper

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(config_path=CONFIGS, config_name="paper_report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    demo_cfg = compose(config_name="demo", overrides=[f"out_dir={cfg.demo_dir}", *cfg.demo_overrides])
    paper(cfg, demo_cfg, CONFIGS)


if __name__ == "__main__":
    main()
