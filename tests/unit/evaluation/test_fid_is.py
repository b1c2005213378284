"""FID, KID and IS through torchmetrics against closed forms; the reference cache; the Inception weights."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from zsnr.evaluation.fid import (
    InceptionV3Features,
    ReferenceStats,
    extract,
    fid_from_features,
    fingerprint,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    reference_statistics,
)
from zsnr.evaluation.images import save_png


class PixelFeatures(nn.Module):
    """Identity extractor: the features are the pixel values of a tiny image (3 x 2 x 1 = 6 dims)."""

    def forward(self, images):
        return images.double().flatten(1)


def gaussian_images(n, mean, scale, seed):
    """uint8 [n, 3, 2, 1] images whose pixels are correlated Gaussians (rounded)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64) * scale
    z = torch.randn(n, 6, generator=g, dtype=torch.float64) @ a.T + mean
    return z.round().clamp(0, 255).to(torch.uint8).view(n, 3, 2, 1)


def closed_form_fid(x, y):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), scipy's matrix square root."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_fid_equals_closed_form_on_empirical_moments():
    real = gaussian_images(400, 120.0, 9.0, seed=0)
    fake = gaussian_images(300, 100.0, 6.0, seed=1)
    ext = PixelFeatures()
    rf, _, rb = extract(ext, [real[:150], real[150:]])
    ff, _, _ = extract(ext, [fake])
    ref = ReferenceStats.from_features(rf, rb)
    expected = closed_form_fid(rf.numpy(), ff.numpy())
    assert expected > 100  # the two sets really differ
    assert frechet_distance(ref, ff) == pytest.approx(expected, rel=1e-6)


def test_fid_of_two_known_gaussians():
    # diagonal covariances commute: FID = |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2 = 4 + (3 - 1)^2 = 8
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1, 1, 1])
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.tensor([2.0, 0, 0, 0])
    ref = ReferenceStats.from_features(x, torch.zeros(n))
    assert frechet_distance(ref, y) == pytest.approx(8.0, abs=0.1)
    with pytest.raises(ValueError, match="dims"):
        frechet_distance(ref, y[:, :3])


def test_fid_from_features_is_frechet_distance_of_the_reference_moments():
    x = gaussian_images(300, 120.0, 9.0, seed=0).double().flatten(1)
    y = gaussian_images(200, 100.0, 6.0, seed=1).double().flatten(1)
    assert fid_from_features(x, y) == pytest.approx(closed_form_fid(x.numpy(), y.numpy()), rel=1e-6)


def closed_form_kid(x, y):
    """Unbiased MMD^2, k(a, b) = (a.b / d + 1)^3, over whole sets of equal size m (Binkowski et al. 2018)."""
    m, d = x.shape
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off_diagonal - 2 * kxy.mean())


def test_kid_equals_closed_form_on_whole_sets():
    # subset_size = the set size: every subset is the whole set (permuted), so each draw gives the closed form
    x = gaussian_images(120, 120.0, 9.0, seed=0).double().flatten(1) / 255
    y = gaussian_images(120, 110.0, 6.0, seed=1).double().flatten(1) / 255
    expected = closed_form_kid(x.numpy(), y.numpy())
    assert expected > 1e-3  # the two sets really differ
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=120)
    assert mean == pytest.approx(expected, rel=1e-9) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_are_seeded_and_checked():
    x = gaussian_images(200, 120.0, 9.0, seed=0).double().flatten(1) / 255
    y = gaussian_images(150, 110.0, 6.0, seed=1).double().flatten(1) / 255
    first = kernel_inception_distance(x, y, subsets=10, subset_size=50, seed=3)
    assert first == kernel_inception_distance(x, y, subsets=10, subset_size=50, seed=3)
    assert first != kernel_inception_distance(x, y, subsets=10, subset_size=50, seed=4)
    assert first[1] > 0  # subsets of 50 differ from one another
    with pytest.raises(ValueError, match="subset_size 151 is larger than the smaller set"):
        kernel_inception_distance(x, y, subset_size=151)
    with pytest.raises(ValueError, match="dims"):
        kernel_inception_distance(x, y[:, :3], subset_size=10)


class OneHotClassifier(nn.Module):
    """Logits that put (almost) all mass on the class written in the red channel."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    def forward(self, images):
        cls = images[:, 0, 0, 0].long() % self.classes
        logits = torch.nn.functional.one_hot(cls, self.classes).double() * 50.0
        return images.double().flatten(1), logits


def test_inception_score_closed_forms():
    k, n = 5, 100
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0] = (torch.arange(n) % k).view(n, 1, 1).to(torch.uint8)
    _, logits, _ = extract(OneHotClassifier(k), [images])
    # confident and uniform over k classes: IS = exp(H(y)) = k
    assert inception_score(logits, splits=1)[0] == pytest.approx(k, rel=1e-6)
    # the same class for every image: p(y|x) = p(y), IS = 1
    assert inception_score(torch.zeros(n, k), splits=1)[0] == pytest.approx(1.0)
    # 4 shuffled splits of 25: each split's class histogram is no longer exactly uniform, so 1 < IS < k
    mean, std = inception_score(logits, splits=4)
    assert 1 < mean < k and std > 0 and inception_score(logits, splits=4) == (mean, std)  # seeded shuffle


def test_reference_statistics_are_cached(tmp_path):
    ref_dir = tmp_path / "ref"
    for i, im in enumerate(gaussian_images(20, 128.0, 30.0, seed=2)):
        save_png(im.expand(3, 2, 1).contiguous(), ref_dir / f"{i:03d}.png")
    ext = PixelFeatures()
    stats, cache, cached = reference_statistics(ref_dir, ext, resolution=1, cache_dir=tmp_path / "cache")
    assert not cached and cache.is_file() and stats.num_samples == 20 and stats.brightness.shape == (20,)
    again, cache2, cached = reference_statistics(ref_dir, ext, resolution=1, cache_dir=tmp_path / "cache")
    assert cached and cache2 == cache and torch.equal(again.features_cov_sum, stats.features_cov_sum)
    # another resolution or extractor is another key
    _, cache3, cached = reference_statistics(ref_dir, ext, resolution=2, cache_dir=tmp_path / "cache")
    assert not cached and cache3 != cache
    lin = nn.Linear(3, 2)
    assert fingerprint(lin) != fingerprint(nn.Linear(3, 2)) and fingerprint(lin) == fingerprint(lin)


def test_inception_weights_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads.*weights-inception-2015-12-05"):
        InceptionV3Features(tmp_path / "pt_inception.pth")


def test_inception_features_from_a_local_file(tmp_path, monkeypatch):
    """The real FID / IS network (torch-fidelity's InceptionV3), random weights saved to a file: shapes only."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:  # build it once without any weights, to write a weights file
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.save(
            fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), tmp_path / "w.pth"
        )
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    net = InceptionV3Features(tmp_path / "w.pth")
    pool, logits = net(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(pool).all()


def test_batched_metrics_equal_closed_forms():
    from zsnr.evaluation.metrics import compute_metrics

    real = gaussian_images(200, 120.0, 9.0, seed=0)
    fake = gaussian_images(61, 100.0, 6.0, seed=1)
    ext = PixelFeatures()
    rf, _, rb = extract(ext, [real])
    out = compute_metrics(fake, batch_size=7, extractor=ext, reference=ReferenceStats.from_features(rf, rb))
    ff = fake.double().flatten(1).numpy()
    assert out["num_images"] == 61 and out["fid_reference_images"] == 200
    assert out["fid"] == pytest.approx(closed_form_fid(rf.numpy(), ff), rel=1e-6)
    assert "inception_score" not in out and "clip_score" not in out
    luma = (fake.double() / 127.5 - 1).mul(
        torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
    )
    assert out["brightness"]["mean"] == pytest.approx(luma.sum(1).mean((1, 2)).mean().item())
    assert out["brightness"]["reference"]["n"] == 200
    with pytest.raises(ValueError, match="uint8"):
        compute_metrics(fake.float())
