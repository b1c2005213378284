"""Sampling, export, the audit and the checkpoint reader work where Lightning cannot be imported: a subprocess
whose import system refuses pytorch_lightning, lightning and lightning_fabric reads a tiny training checkpoint,
samples from it and exports it. (tests/unit/test_layers.py checks the same from the import statements.)"""

import subprocess
import sys
import textwrap

from tiny_checkpoint import shared_tiny_checkpoint

BLOCKED = ("pytorch_lightning", "lightning", "lightning_fabric")

SCRIPT = """
import sys

BLOCKED = {blocked!r}


class NoLightning:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: this process must run without Lightning")
        return None


sys.meta_path.insert(0, NoLightning())

import torch  # noqa: E402

from zsnr import audit  # noqa: E402, F401
from zsnr.export import export_diffusers  # noqa: E402
from zsnr.models.checkpoint import TrainingCheckpoint  # noqa: E402
from zsnr.sampling import load_for_inference  # noqa: E402
from zsnr.single_file import export_single_file  # noqa: E402, F401

ckpt = TrainingCheckpoint.open({ckpt!r})
assert ckpt.step == 2 and set(ckpt.unet("ema")) == set(ckpt.unet("raw")), ckpt.step
model = load_for_inference({ckpt!r})
images = model.generate(["a black square"], [0], num_steps=2)
assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
export_diffusers(model, {out!r}, audit=False)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def test_sample_and_export_a_checkpoint_with_lightning_blocked(tmp_path_factory):
    ckpt = shared_tiny_checkpoint(tmp_path_factory)
    out = tmp_path_factory.mktemp("no_lightning") / "diffusers"
    script = SCRIPT.format(blocked=BLOCKED, ckpt=str(ckpt), out=str(out))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
