"""The experiments: `make demo` (demo) and `make paper` (paper), the paper's protocol in miniature.

They sit on top of everything else: they start training runs (`python -m zsnr.train`, runs), sample the
checkpoints (samples), measure (demo_metrics, paper_measures, on zsnr.evaluation's metrics) and write the
reports (demo_report, paper_report). Nothing below imports them. launch/demo.py and launch/paper.py are their
Hydra entry points.
"""
