"""zsnr.audit against the paper's Table 1/2 numbers and diffusers' documented spacing rules."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from zsnr import audit as audit_mod
from zsnr.models.sd21 import SD21_BASE_SCHEDULER as SD21_BASE  # as stabilityai ships it

FIXED = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


SD21_SNR_T = 0.068265**2 / (1 - 0.068265**2)  # Table 1 (the sqrt(abar_T) column)


def write(tmp_path, config, folder=True):
    if folder:  # a diffusers model folder
        (tmp_path / "scheduler").mkdir()
        path = tmp_path / "scheduler" / "scheduler_config.json"
        (tmp_path / "model_index.json").write_text("{}")
    else:
        path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(config))
    return tmp_path if folder else path


def test_sd21_base_has_all_three_flaws(tmp_path):
    a = audit_mod.audit(write(tmp_path, SD21_BASE))
    # Table 1's sqrt(abar_T) column (its SNR entry for SD, 4.928220e-03, contradicts that column)
    assert a.sqrt_abar_T == pytest.approx(0.068265, abs=5e-7)
    assert a.terminal_snr == pytest.approx(0.068265**2 / (1 - 0.068265**2), rel=2e-5)
    # diffusers "leading" with steps_offset=1: (T // S) * (S - 1) + 1, i.e. the paper's 1-based 901 for S=10
    assert a.first_timestep == {s: (1000 // s) * (s - 1) + 1 for s in (10, 25, 50)}
    assert a.zsnr_first_timestep == {10: 900, 25: 960, 50: 980}  # Table 2, 0-based
    assert [f.flaw.split(".")[0] for f in a.flaws] == ["1", "2", "3"]
    assert "rescale_betas_zero_snr=True" in a.flaws[0].fix
    assert "v_prediction" in a.flaws[1].fix
    assert "trailing" in a.flaws[2].fix
    assert any("steps_offset=1" in n for n in a.notes)


def test_fixed_config_has_no_flaw(tmp_path):
    a = audit_mod.audit(write(tmp_path, FIXED, folder=False))
    assert a.terminal_snr == 0.0 and a.sqrt_abar_T == 0.0
    assert a.first_timestep == {10: 999, 25: 999, 50: 999}
    assert a.flaws == []
    assert any("guidance_rescale=0.7" in n for n in a.notes)
    assert not any("set_alpha_to_one" in n or "clip_sample" in n for n in a.notes)


def test_cosine_clip_and_epsilon_at_zero_snr(tmp_path):
    # iDDPM cosine clipped at 0.999: Table 1's SNR(T) = 2.4288e-09, still a flaw
    cosine = {**FIXED, "beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": False}
    a = audit_mod.audit(write(tmp_path, cosine, folder=False))
    assert a.terminal_snr == pytest.approx(2.4288e-09, rel=2e-3)
    assert [f.flaw.split(".")[0] for f in a.flaws] == ["1"]
    eps = {**FIXED, "prediction_type": "epsilon", "clip_sample": True, "set_alpha_to_one": False}
    a = audit_mod.audit(write(tmp_path, eps, folder=False))
    assert [f.flaw.split(".")[0] for f in a.flaws] == ["2"]
    assert "pure noise" in a.flaws[0].evidence
    assert any("clip_sample=True" in n for n in a.notes) and any("set_alpha_to_one" in n for n in a.notes)


def test_sigma_space_scheduler_spacing_differs_from_table2(tmp_path):
    # DPM-Solver's own "linspace" drops the last of S+1 points: 999, 899, ... (Table 2's linspace: 999, 888, ...)
    dpm = {**FIXED, "_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "linspace"}
    a = audit_mod.audit(write(tmp_path, dpm, folder=False))
    assert a.first_timestep[10] == 999 and a.flaws == []
    euler = {**FIXED, "_class_name": "EulerDiscreteScheduler"}
    a = audit_mod.audit(write(tmp_path, euler, folder=False))
    assert a.terminal_snr == 0.0 and any("abar_T = 5.96e-08" in n for n in a.notes)  # diffusers' 2**-24


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        audit_mod.audit(tmp_path)
    with pytest.raises(ValueError, match="NoSuchScheduler"):
        audit_mod.audit(write(tmp_path, {**FIXED, "_class_name": "NoSuchScheduler"}, folder=False))


def test_cli(tmp_path):
    path = write(tmp_path, SD21_BASE)
    cmd = [sys.executable, "-m", "zsnr.audit", str(path), "--json", "--strict"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["starts_at_T"] is False and len(data["flaws"]) == 3
    assert audit_mod.main([str(path)]) == 0
    assert audit_mod.main([str(tmp_path / "missing")]) == 2


def _single_file(path, keys=(), yaml_params=None):
    from safetensors.torch import save_file

    save_file(
        {"model.diffusion_model.out.2.bias": torch.zeros(4), **{k: torch.tensor([]) for k in keys}}, path
    )
    if yaml_params is not None:  # an original-layout inference yaml (no zsnr section)
        path.with_suffix(".yaml").write_text(yaml.safe_dump({"model": {"params": yaml_params}}))
    return path


def test_single_files_without_yaml_read_their_markers(tmp_path):
    plain = audit_mod.audit(_single_file(tmp_path / "sd.safetensors"))
    assert plain.sqrt_abar_T == pytest.approx(0.068265, abs=5e-7)  # Table 1: SD 2.x's betas assumed
    assert [f.flaw.split(".")[0] for f in plain.flaws] == ["1", "2", "3"]
    marked = audit_mod.audit(_single_file(tmp_path / "zsnr.safetensors", keys=("v_pred", "ztsnr")))
    assert marked.terminal_snr == 0.0 and marked.prediction_type == "v_prediction"
    assert [f.flaw.split(".")[0] for f in marked.flaws] == ["3"]  # no spacing in the file: leading assumed
    assert any("marker keys: ['v_pred', 'ztsnr']" in n for n in marked.notes)


def test_single_file_yaml_without_zsnr_section(tmp_path):
    v_model = {"parameterization": "v", "linear_start": 0.00085, "linear_end": 0.012}
    a = audit_mod.audit(_single_file(tmp_path / "v.safetensors", yaml_params=v_model))
    assert a.prediction_type == "v_prediction" and a.terminal_snr == pytest.approx(SD21_SNR_T, rel=2e-5)
    assert [f.flaw.split(".")[0] for f in a.flaws] == ["1", "3"]
    with pytest.raises(FileNotFoundError, match="single-file"):
        audit_mod.audit(tmp_path / "missing.safetensors")
