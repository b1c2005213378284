"""Every claim of the paper, measured in miniature: `python launch/paper.py` (what `make paper` runs).

Once per protocol (configs/paper_report.yaml `protocols`: a demo folder and its overrides): runs `make demo`
first (its base and two fine-tunes are reused when already trained), then fine-tunes the one-fix-removed arms and
offset noise from the same base, samples every model with the same seeds, and writes outputs/paper/<protocol>/
(report.md, metrics.json, figures); outputs/paper/report.md has the claims table with one column per protocol.
The body is zsnr.experiments.paper.
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
    demos = {
        name: compose(config_name="demo", overrides=[f"out_dir={p.demo_dir}", *p.demo_overrides])
        for name, p in cfg.protocols.items()
    }
    paper(cfg, demos, CONFIGS)


if __name__ == "__main__":
    main()
