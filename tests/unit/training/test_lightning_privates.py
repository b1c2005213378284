"""The private names of Lightning and Hydra that zsnr still relies on, where no public API does the job: one test
each, so an upgrade that moves one fails here, by name, and not somewhere in a training run.

Each was checked against pytorch_lightning / lightning_fabric 2.6.6 and hydra-core 1.3.8."""

import inspect

CHECKED = "pytorch_lightning 2.6.6 / lightning_fabric 2.6.6"


def moved(what: str, use: str) -> str:
    return f"{what} moved (checked against {CHECKED}): {use} needs another way in"


def test_hydra_subprocess_cmd():
    """cluster.multirun_job_scope swaps the command Lightning's subprocess launcher starts ranks with under Hydra,
    so a multirun's job is not restarted as a whole sweep on every rank. Lightning has no hook for it."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    assert callable(getattr(subprocess_script, "_hydra_subprocess_cmd", None)), moved(
        "pytorch_lightning.strategies.launchers.subprocess_script._hydra_subprocess_cmd",
        "zsnr.training.cluster.multirun_job_scope",
    )
    source = inspect.getsource(subprocess_script._SubprocessScriptLauncher._call_children_scripts)
    assert "_hydra_subprocess_cmd(" in source, moved(
        "the launcher's call of _hydra_subprocess_cmd", "cluster.py"
    )


def test_model_parallel_data_parallel_size():
    """parallel.FSDP2Strategy sets the data-parallel size to every process of every node once they are known
    (setup_environment); the constructor's "auto" means the number of nodes, and the numbers are not known yet."""
    from pytorch_lightning.strategies import ModelParallelStrategy

    source = inspect.getsource(ModelParallelStrategy.setup_environment)
    assert "self._data_parallel_size" in source, moved(
        "ModelParallelStrategy._data_parallel_size", "zsnr.training.parallel.FSDP2Strategy"
    )


def test_csv_writer_check_log_dir_exists_and_logger_experiment():
    """loggers.RunCSVLogger keeps metrics.csv across attempts: its writer overrides _check_log_dir_exists (where
    the base class deletes the file), and its `experiment` fills the _experiment cache the base class reads."""
    from lightning_fabric.loggers.csv_logs import CSVLogger, _ExperimentWriter

    assert "self._check_log_dir_exists()" in inspect.getsource(_ExperimentWriter.__init__), moved(
        "_ExperimentWriter._check_log_dir_exists", "zsnr.training.loggers._KeptHistoryWriter"
    )
    assert "self._experiment" in inspect.getsource(CSVLogger.finalize), moved(
        "CSVLogger._experiment", "zsnr.training.loggers.RunCSVLogger"
    )


def test_load_distributed_checkpoint():
    """tests/integration/test_ddp_fsdp.py consolidates a sharded checkpoint in-process with the function behind
    `python -m lightning_fabric.utilities.consolidate_checkpoint` (the README's command, which it also runs)."""
    from lightning_fabric.utilities import load

    assert callable(getattr(load, "_load_distributed_checkpoint", None)), moved(
        "lightning_fabric.utilities.load._load_distributed_checkpoint", "tests/integration/test_ddp_fsdp.py"
    )
