"""text_to_image wiring: with the ideal denoiser of a one-image data set, any schedule returns that image."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zsnr.models import IdentityAutoencoder, Tokenizer
from zsnr.models.schedule import Schedule
from zsnr.sampling import mean_brightness, prompt_states, resolve_dtype, text_to_image


class IdealUNet(nn.Module):
    """The exact model output for data that is always x_star (closed form, per parameterisation)."""

    def __init__(self, x_star: torch.Tensor, schedule: Schedule) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.x_star, self.schedule = x_star, schedule
        self.abar = schedule.alphas_cumprod()

    def forward(self, x, t, encoder_hidden_states):
        a = self.abar[t].view(-1, 1, 1, 1).double()
        x, x0 = x.double(), self.x_star.double().expand_as(x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[
            self.schedule.prediction_type
        ]
        return SimpleNamespace(sample=out.float())


class ZeroText(nn.Module):
    def forward(self, ids):
        return torch.zeros(ids.shape[0], ids.shape[1], 4)


@pytest.mark.parametrize(
    "schedule",
    [Schedule(), Schedule(rescale_zero_terminal_snr=False, prediction_type="epsilon", spacing="leading")],
    ids=["zero_snr", "sd_flawed"],
)
def test_ideal_model_reproduces_the_data_image(schedule):
    x_star = torch.tensor([-0.9, -0.8, -0.7]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    images = text_to_image(
        IdealUNet(x_star, schedule), IdentityAutoencoder(), ZeroText(), Tokenizer(), schedule,
        ["a solid black background", "a white background"], [0, 1], resolution=8, num_steps=10,
        guidance_scale=7.5,
    )  # fmt: skip
    torch.testing.assert_close(images, x_star.expand(2, 3, 8, 8), atol=1e-4, rtol=0)
    expected = 0.299 * -0.9 + 0.587 * -0.8 + 0.114 * -0.7
    torch.testing.assert_close(mean_brightness(images), torch.full((2,), expected), atol=1e-4, rtol=0)


class ConvUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, t, encoder_hidden_states):
        return SimpleNamespace(sample=self.conv(x))


def test_seeds_fix_the_noise():
    net, parts = ConvUNet(), (IdentityAutoencoder(), ZeroText(), Tokenizer(), Schedule())
    kw = dict(resolution=8, num_steps=3, guidance_scale=1.0)
    a = text_to_image(net, *parts, ["x", "y"], [3, 4], **kw)
    b = text_to_image(net, *parts, ["x", "y"], [3, 5], **kw)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_dtype_auto_is_bfloat16_on_cuda_only_and_bad_names_are_refused():
    assert resolve_dtype("auto", "cuda") == "bfloat16" and resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"
    with pytest.raises(ValueError, match="dtype must be auto or one of.*'half'"):
        resolve_dtype("half", "cpu")


def test_the_negative_prompt_is_encoded_once_per_batch():
    calls = []

    class CountingText(ZeroText):
        def forward(self, ids):
            calls.append(ids.shape[0])
            return super().forward(ids)

    pos, neg = prompt_states(CountingText(), Tokenizer(), ["a", "b", "c"], "", "cpu")
    assert calls == [3, 1] and pos.shape == neg.shape == (3, 77, 4)
