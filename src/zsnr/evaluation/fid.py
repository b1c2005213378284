"""FID, KID and Inception Score through torchmetrics, on features from an injectable extractor.

An extractor is any nn.Module mapping uint8 images [N, 3, H, W] to features [N, D], or to a pair
(features [N, D], logits [N, K]) when it also serves the Inception Score. Real runs use `InceptionV3Features`
(torch-fidelity's port of the TF Inception network that FID and IS are defined with) with weights from a
local file; the synthetic data's metrics use `zsnr.evaluation.classifier.SyntheticClassifier` (a small
CNN's penultimate layer, as MNIST FIDs use a LeNet's); tests pass tiny extractors built in the test. Features
are extracted once per image here, and torchmetrics' `FrechetInceptionDistance` /
`KernelInceptionDistance` / `InceptionScore` get them through an identity `feature` module, so the metric
maths is torchmetrics'. Reference statistics (torchmetrics' real-feature sums) are computed
once and cached on disk, keyed by the reference files, the resolution and the extractor's weights.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zsnr.data import to_model_range
from zsnr.evaluation.brightness import mean_brightness
from zsnr.evaluation.images import iterate_batches, list_images
from zsnr.models.files import load_state_dict, require_file

# torchmetrics would sum its states over the process group when one exists; the features it is given here are
# every rank's already (gathered in image order by zsnr.sampling.ranks), and only rank 0 computes.
LOCAL = {"sync_on_compute": False}
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


class InceptionV3Features(nn.Module):
    """FID's InceptionV3 (pool3, 2048-d) and IS's logits (1008, 'logits_unbiased') from a local weights file."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = require_file(weights, what="the InceptionV3 weights for FID / IS", download=INCEPTION_URL)
        load_state_dict(
            path
        )  # refuses anything but plain tensors (weights_only=True) before torch-fidelity loads it
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net(images)
        return pool, logits


class _Features(nn.Identity):
    """What torchmetrics gets as `feature`: features are already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features


def fingerprint(extractor: nn.Module) -> str:
    """sha256 of the extractor's class and weights: a cache key that changes when the network does."""
    h = hashlib.sha256(f"{type(extractor).__module__}.{type(extractor).__qualname__}".encode())
    for name, t in sorted(extractor.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def extract(
    extractor: nn.Module, batches: Iterable[torch.Tensor], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(features [N, D] float64, logits [N, K] float64 or None, brightness [N] float64) of uint8 batches."""
    extractor.eval().to(device)
    feats, logits, light = [], [], []
    for images in batches:
        out = extractor(images.to(device))
        f, lg = out if isinstance(out, tuple) else (out, None)
        feats.append(f.double().flatten(1).cpu())
        if lg is not None:
            logits.append(lg.double().cpu())
        light.append(mean_brightness(to_model_range(images)).double().cpu())
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats), (torch.cat(logits) if logits else None), torch.cat(light)


@dataclass
class ReferenceStats:
    """torchmetrics' real-feature states (sum, sum of outer products, count) and the per-image brightness."""

    features_sum: torch.Tensor  # float64 [D]
    features_cov_sum: torch.Tensor  # float64 [D, D]
    num_samples: int
    brightness: torch.Tensor  # float64 [N]

    @classmethod
    def from_features(cls, features: torch.Tensor, brightness: torch.Tensor) -> ReferenceStats:
        f = features.double()
        return cls(f.sum(0), f.T @ f, f.shape[0], brightness.double())


def frechet_distance(reference: ReferenceStats, features: torch.Tensor) -> float:
    """FID between the reference statistics and generated features [N, D] (torchmetrics' computation)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    dim = _same_dims(reference.features_sum.numel(), features)
    metric = FrechetInceptionDistance(feature=_Features(dim), reset_real_features=False, **LOCAL)
    metric.real_features_sum = reference.features_sum.clone()
    metric.real_features_cov_sum = reference.features_cov_sum.clone()
    metric.real_features_num_samples = torch.tensor(reference.num_samples)
    metric.update(features.double(), real=False)
    return float(metric.compute())


def _same_dims(reference_dim: int, features: torch.Tensor) -> int:
    if features.shape[-1] != reference_dim:
        raise ValueError(
            f"generated features have {features.shape[-1]} dims, the reference {reference_dim}: "
            "same extractor?"
        )
    return reference_dim


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torchmetrics draws subsets / splits from torch's global generator: seed it here, restore it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def _quiet_feature_buffer() -> Iterator[None]:
    """KID and IS keep every feature in memory, which is what they are given here anyway."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        yield


def fid_from_features(reference_features: torch.Tensor, features: torch.Tensor) -> float:
    """FID between two feature sets [N, D] (the one path for Inception and the synthetic classifier alike)."""
    no_brightness = torch.empty(0, dtype=torch.float64)  # FID does not use the per-image brightness
    return frechet_distance(ReferenceStats.from_features(reference_features, no_brightness), features)


def kernel_inception_distance(
    reference_features: torch.Tensor,
    features: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of KID over `subsets` random draws of `subset_size` features from each set (torchmetrics'
    KernelInceptionDistance): the unbiased estimate of MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3
    (Binkowski et al. 2018, "Demystifying MMD GANs", arXiv 1801.01401). Unlike FID it has no bias that
    depends on the number of images, so small sets compare fairly. The draws are seeded: reproducible."""
    from torchmetrics.image.kid import KernelInceptionDistance

    dim = _same_dims(reference_features.shape[-1], features)
    smaller = min(len(reference_features), len(features))
    if subset_size > smaller:
        raise ValueError(
            f"KID subset_size {subset_size} is larger than the smaller set ({len(reference_features)} "
            f"reference, {len(features)} generated features): pass subset_size <= {smaller} or use more "
            "images"
        )
    with _quiet_feature_buffer():
        metric = KernelInceptionDistance(
            feature=_Features(dim), subsets=subsets, subset_size=subset_size, **LOCAL
        )
    metric.update(reference_features.double(), real=True)
    metric.update(features.double(), real=False)
    with _seeded(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` splits (torchmetrics' InceptionScore).
    torchmetrics shuffles before splitting; the shuffle is seeded so the number is reproducible."""
    from torchmetrics.image.inception import InceptionScore

    with _quiet_feature_buffer():
        metric = InceptionScore(feature=nn.Identity(), splits=splits, **LOCAL)
    metric.update(logits.double())
    with _seeded(seed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # std of a single split
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0


def reference_key(files: list[Path], resolution: int, extractor_id: str) -> str:
    h = hashlib.sha256(json.dumps([resolution, extractor_id]).encode())
    for f in files:
        h.update(f"{f.resolve()}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:24]


def reference_statistics(
    reference_dir: str | Path,
    extractor: nn.Module,
    resolution: int,
    cache_dir: str | Path,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[ReferenceStats, Path, bool]:
    """(stats, cache file, loaded_from_cache). Reference images are center-cropped and resized to
    `resolution` (the generated images' size) before the extractor."""
    files = list_images(reference_dir)
    key = reference_key(files, resolution, fingerprint(extractor))
    cache = Path(cache_dir).expanduser() / f"reference-{key}.pt"
    if cache.is_file():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        return ReferenceStats(**state), cache, True
    feats, _, light = extract(extractor, iterate_batches(files, batch_size, resolution), device)
    stats = ReferenceStats.from_features(feats, light)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(stats.__dict__, tmp)
    tmp.replace(cache)  # atomic: parallel sweep jobs never read a half-written file
    return stats, cache, False
