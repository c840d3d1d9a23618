"""Frechet distance, KID, nearest neighbours, PNG grids, the dataset feature network and the FID Inception."""
import dataclasses

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from ict_core.config import load_config
from ict_core.data import load_dataset
from ict_core.inception import FEATURE_DIM, InceptionV3FID, load_inception
from ict_core.featnet import get_feature_extractor, reference_stats, use_inception
from ict_core.image_grids import save_grid
from ict_core.metrics import feature_stats, frechet_distance, kid, nearest_neighbor_distance


def eval_cfg(**overrides):
    return load_config(overrides={f"eval.{k}": v for k, v in overrides.items()}).eval


# ---- Frechet distance and KID ---------------------------------------------------------------------

def test_frechet_distance_of_identical_stats_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 32)) @ np.random.default_rng(1).normal(size=(32, 32))
    mu, sigma = feature_stats(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    var1, var2 = rng.uniform(0.1, 3.0, size=16), rng.uniform(0.1, 3.0, size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_sqrtm_on_full_covariances_and_survives_singular_ones():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(200, 24)), rng.normal(size=(200, 24)) * 1.5 + 0.3
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    # fewer samples than dimensions: rank-deficient covariances still give a finite, non-negative value
    mu3, s3 = feature_stats(torch.randn(10, 64, generator=torch.Generator().manual_seed(0)))
    mu4, s4 = feature_stats(torch.randn(10, 64, generator=torch.Generator().manual_seed(1)))
    value = frechet_distance(mu3, s3, mu4, s4)
    assert np.isfinite(value) and value > 0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same = kid(x, y, num_subsets=20, subset_size=300)
    shifted = kid(x, y + 0.5, num_subsets=20, subset_size=300)
    assert abs(same) < 0.01
    assert shifted > 0.05 and shifted > 20 * abs(same)


def test_kid_precomputed_kernels_give_the_per_subset_value(monkeypatch):
    import ict_core.metrics

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) + 0.2
    fast = kid(x, y, num_subsets=10, subset_size=100, seed=3)
    monkeypatch.setattr(ict_core.metrics, "KID_FULL_KERNEL_MAX", 0)
    assert kid(x, y, num_subsets=10, subset_size=100, seed=3) == pytest.approx(fast, rel=1e-12)


# ---- nearest neighbours and grids -------------------------------------------------------------------

def test_nearest_neighbor_distance_on_a_hand_case():
    reference = torch.zeros(3, 1, 2, 2)
    reference[1] = 1.0
    reference[2, 0, 0, 0] = 4.0
    samples = torch.stack([reference[1] + 1e-4, torch.full((1, 2, 2), 0.5), reference[2].clone()])
    samples[1, 0, 0, 0] = 3.0
    dist = nearest_neighbor_distance(samples, reference, batch_size=2, candidates=1)
    # sample 0: 1e-4 off image 1 in all 4 pixels -> RMS 1e-4 (exact: not lost to cancellation)
    # sample 1: [3, .5, .5, .5] vs image 2 [4, 0, 0, 0] -> sqrt(1 + 3 * .25) / 2; vs image 1 -> sqrt(4 + .75) / 2
    expected = torch.tensor([1e-4, np.sqrt(1.75) / 2, 0.0], dtype=torch.float32)
    assert torch.allclose(dist, expected, rtol=1e-4, atol=1e-7)


def test_save_grid_writes_a_readable_png(tmp_path):
    images = torch.linspace(-1, 1, 5 * 3 * 4 * 6).reshape(5, 3, 4, 6)
    images[0] = -1.0
    images[1] = 1.0
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        array = np.asarray(png)
    assert array.shape == (2 * 5 + 1, 3 * 7 + 1, 3)  # 2 rows x 3 columns of 4x6 images, 1 px padding
    assert np.all(array[1:5, 1:7] == 0) and np.all(array[1:5, 8:14] == 255)
    gray = save_grid(torch.zeros(4, 1, 8, 8), tmp_path / "gray.png")
    with Image.open(gray) as png:
        assert png.mode == "L" and png.size == (19, 19)
        assert np.all(np.asarray(png)[1:9, 1:9] == 128)


# ---- dataset feature network ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_dataset(load_config().data)


@pytest.fixture(scope="module")
def digits_extractor(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache_a")
    return get_feature_extractor(digits, eval_cfg(features="dataset", cache_dir=str(cache)), "cpu"), cache


def test_digits_feature_net_is_deterministic_accurate_and_cached(digits, digits_extractor, tmp_path):
    extractor, cache = digits_extractor
    assert extractor.name == "dataset" and extractor.dim in range(64, 129)
    assert extractor.info["heldout_accuracy"] > 0.85
    other = get_feature_extractor(digits, eval_cfg(features="dataset", cache_dir=str(tmp_path)), "cpu")
    assert other.info["train_seconds"] > 0  # trained afresh in its own cache
    feats = extractor(digits.heldout)
    assert feats.shape == (digits.heldout.shape[0], extractor.dim)
    assert torch.equal(feats, other(digits.heldout))
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob(".tmp-*"))
    files[0].write_bytes(b"corrupt")  # a damaged cache file is retrained and replaced, not fatal
    again = get_feature_extractor(digits, eval_cfg(features="dataset", cache_dir=str(cache)), "cpu")
    assert torch.equal(again(digits.heldout), feats)


def test_every_run_seed_shares_the_feature_net_of_seed_0(digits, digits_extractor):
    extractor, cache = digits_extractor
    reseeded = load_dataset(load_config().data, seed=5)
    assert not torch.equal(reseeded.heldout, digits.heldout)  # another split ...
    shared = get_feature_extractor(reseeded, eval_cfg(features="dataset", cache_dir=str(cache)), "cpu")
    assert shared.key == extractor.key and len(list(cache.glob("*.pt"))) == 1  # ... the same cached network
    assert torch.equal(shared(reseeded.heldout), extractor(reseeded.heldout))


def test_frechet_distance_separates_heldout_digits_from_noise(digits, digits_extractor):
    extractor, cache = digits_extractor
    mu, sigma = reference_stats(digits, extractor, cache)
    assert len(list(cache.glob("refstats_*.npz"))) == 1
    mu_again, sigma_again = reference_stats(digits, extractor, cache)
    assert np.array_equal(mu, mu_again) and np.array_equal(sigma, sigma_again)
    fd_heldout = frechet_distance(mu, sigma, *feature_stats(extractor(digits.heldout)))
    noise = torch.rand(digits.heldout.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fd_noise = frechet_distance(mu, sigma, *feature_stats(extractor(noise)))
    assert fd_heldout * 10 < fd_noise
    kid_heldout = kid(extractor(digits.heldout), extractor(digits.train), num_subsets=10, subset_size=150)
    kid_noise = kid(extractor(noise), extractor(digits.train), num_subsets=10, subset_size=150)
    assert kid_heldout * 10 < kid_noise


def test_auto_features_pick_inception_only_for_rgb_at_32px_or_more(digits):
    rgb32 = dataclasses.replace(digits, channels=3, resolution=32)
    rgb16 = dataclasses.replace(digits, channels=3, resolution=16)
    assert use_inception(rgb32, eval_cfg(inception_path="/weights.pth"))
    assert not use_inception(rgb32, eval_cfg())
    assert not use_inception(rgb16, eval_cfg(inception_path="/weights.pth"))
    assert not use_inception(digits, eval_cfg(inception_path="/weights.pth"))
    assert use_inception(digits, eval_cfg(features="inception", inception_path="/weights.pth"))
    assert not use_inception(rgb32, eval_cfg(features="dataset", inception_path="/weights.pth"))


# ---- FID Inception-v3 ----------------------------------------------------------------------------

def test_inception_loads_its_state_dict_from_a_file_and_gives_2048_features(tmp_path):
    torch.manual_seed(0)
    net = InceptionV3FID()
    state = net.state_dict()
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in state and state["fc.weight"].shape == (1008, 2048)
    # files saved by old PyTorch versions have no num_batches_tracked entries
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "pt_inception.pth")
    cfg = eval_cfg(features="inception", inception_path=str(tmp_path / "pt_inception.pth"))
    fake = dataclasses.replace(load_dataset(load_config().data), channels=3, resolution=32)
    extractor = get_feature_extractor(fake, cfg, "cpu")
    assert extractor.name == "inception" and extractor.dim == FEATURE_DIM
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = extractor(images)
    assert feats.shape == (2, FEATURE_DIM) and torch.isfinite(feats).all() and feats.std() > 0
    loaded = extractor.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_inception_accepts_torchscript_and_explains_missing_or_wrong_files(tmp_path):
    class Pool3(torch.nn.Module):  # stands in for a TorchScript Inception: (B, 3, 299, 299) -> (B, 2048, 1, 1)
        def forward(self, x):
            return x.mean(dim=(2, 3), keepdim=True).repeat(1, 683, 1, 1)[:, :2048]

    torch.jit.trace(Pool3(), torch.zeros(1, 3, 299, 299)).save(str(tmp_path / "inception.pt"))
    scripted = load_inception(tmp_path / "inception.pt")
    feats = scripted(torch.zeros(2, 1, 8, 8))
    assert feats.shape == (2, FEATURE_DIM) and torch.all(feats == 0)
    with pytest.raises(FileNotFoundError, match="eval.inception_path.*pt_inception-2015-12-05"):
        load_inception(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="eval.inception_path is empty"):
        load_inception("")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not match the FID Inception-v3 layout"):
        load_inception(tmp_path / "other.pth")
