"""What the evaluation measures, checked with planted data: the feature network does not reward copies of the
generator's training images, patches' held-out crops share no pixel with training crops, fd_se tracks the
spread of FD over independent sample sets, and FID's inputs are uint8-quantized (docs/MEASUREMENT.md)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ict_core import featnet, metrics
from ict_core.config import ConfigError, load_config, load_preset
from ict_core.data import load_dataset
from ict_core.photo_patches import PATCH_REGION


def _blur(images: torch.Tensor) -> torch.Tensor:
    """Area-average down to 2 x 2 pixels, then enlarge bilinearly: only the coarse colour layout is kept."""
    factor = images.shape[-1] // 2
    return F.interpolate(F.avg_pool2d(images, factor), size=images.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["data.name=digits"], ["data.name=patches", "data.resolution=8"],
                                       ["data.name=patches", "data.resolution=16"],
                                       ["data.name=patches", "data.resolution=32"],
                                       ["data.name=patches_grey", "data.resolution=8"],
                                       ["data.name=patches_grey", "data.resolution=16"]],
                         ids=["digits", "patches-8", "patches-16", "patches-32", "patches_grey-8", "patches_grey-16"])
def test_planted_sets_copies_do_not_beat_unseen_images_and_blur_is_worse(overrides, tmp_path_factory):
    # The default cache: the feature network is trained once per machine (keyed by its recipe and its training
    # images' content), as runs get it; the reference statistics are recomputed here.
    cfg = load_config(None, overrides + ["eval.features=dataset"])
    dataset = load_dataset(cfg.data)
    extractor = featnet.get_feature_extractor(dataset, cfg.eval)
    mu, sigma = featnet.reference_stats(dataset, extractor, str(tmp_path_factory.mktemp("planted")))
    count = dataset.heldout.shape[0]
    pick = torch.randperm(dataset.train.shape[0], generator=torch.Generator().manual_seed(0))[:count]
    scores = {}
    for name, images in (("copies", dataset.train[pick]), ("unseen", dataset.heldout), ("blur", _blur(dataset.heldout))):
        feats = extractor(images)
        scores[name] = (metrics.frechet_distance(*metrics.feature_stats(feats), mu, sigma),
                        metrics.frechet_distance_se(feats, mu, sigma))
    print(dataset.key, f"accuracy {extractor.info.get('heldout_accuracy'):.3f}",
          {k: f"{v[0]:.1f} +- {v[1]:.1f}" for k, v in scores.items()})

    def noise(a, b):
        return math.hypot(scores[a][1], scores[b][1])

    # Copying the generator's training images earns nothing over drawing new real images ...
    assert scores["copies"][0] > scores["unseen"][0] - 2 * noise("copies", "unseen")
    # ... while blur costs more than sampling noise against both.
    assert scores["blur"][0] > scores["unseen"][0] + 2 * noise("blur", "unseen")
    assert scores["blur"][0] > scores["copies"][0] + 1.5 * noise("blur", "copies")
    # A yardstick that separates (issue 22 asks for at least 5 of the unseen set's standard errors between unseen
    # and blurred; featnet-v2 managed about 6 on patches, featnet-v3 15-20, so 10 keeps a margin both ways).
    assert scores["blur"][0] - scores["unseen"][0] >= 10 * scores["unseen"][1]


@pytest.mark.parametrize("resolution", [8, 32])
def test_patch_parts_share_no_pixel(resolution):
    dataset = load_dataset(load_config(None, ["data.name=patches", f"data.resolution={resolution}"]).data)
    boxes = dataset.crop_boxes
    assert {k: v.shape[0] for k, v in boxes.items()} == {"train": dataset.train.shape[0],
                                                         "heldout": dataset.heldout.shape[0],
                                                         "featnet": dataset.featnet.shape[0]}
    assert torch.equal(boxes["train"][:, 0], dataset.train_labels)  # boxes follow the images' order
    for other in ("heldout", "featnet"):
        train, held = boxes["train"], boxes[other]
        same_photo = train[:, None, 0] == held[None, :, 0]
        # Chebyshev offset between top-left corners: >= PATCH_REGION means the two crops share no pixel.
        offset = torch.maximum((train[:, None, 1] - held[None, :, 1]).abs(), (train[:, None, 2] - held[None, :, 2]).abs())
        min_offset = int(offset[same_photo].min())
        assert min_offset >= PATCH_REGION, f"{other}: a crop {min_offset} px from a training crop"
    # Every photo contributes to every part, so held-out crops show the same kinds of content as training's.
    for part in ("train", "heldout", "featnet"):
        assert set(boxes[part][:, 0].tolist()) == set(range(dataset.num_classes))


def test_fd_se_tracks_the_spread_of_fd_over_independent_sample_sets():
    rng = np.random.default_rng(0)
    dim, count = 8, 200
    scale = np.linspace(0.5, 2.0, dim)
    ref_mu, ref_sigma = np.zeros(dim), np.diag(scale ** 2)
    shifted = [rng.normal(0.3, scale, size=(count, dim)) for _ in range(60)]
    fds = [metrics.frechet_distance(*metrics.feature_stats(x), ref_mu, ref_sigma) for x in shifted]
    ses = [metrics.frechet_distance_se(x, ref_mu, ref_sigma, seed=i) for i, x in enumerate(shifted[:10])]
    spread = float(np.std(fds, ddof=1))
    assert 0.6 * spread < float(np.mean(ses)) < 1.6 * spread
    # four times the samples: about half the standard error
    big = rng.normal(0.3, scale, size=(4 * count, dim))
    assert metrics.frechet_distance_se(big, ref_mu, ref_sigma) < 0.7 * float(np.mean(ses))
    with pytest.raises(ValueError, match="num_resamples >= 2"):
        metrics.frechet_distance_se(big, ref_mu, ref_sigma, num_resamples=1)


def test_fid_presets_need_inception_weights_and_quantize_their_inputs(tmp_path):
    for name in ("cifar10", "cifar10_deep", "imagenet64"):
        cfg = load_preset(name)
        assert cfg.eval.features == "inception" and cfg.eval.inception_path
    with pytest.raises(ConfigError, match="eval.inception_path.*pt_inception-2015-12-05"):
        load_config("cifar10", ["eval.inception_path="])
    digits = load_dataset(load_config().data)
    missing = load_config(None, ["eval.features=inception", f"eval.inception_path={tmp_path / 'none.pth'}"]).eval
    with pytest.raises(ConfigError, match="none.pth.*is not a file.*pt_inception"):
        featnet.check_feature_weights(digits, missing)
    featnet.check_feature_weights(digits, load_config().eval)  # dataset features need no file
    # samples are scored as the 8-bit images they would be saved as
    x = torch.linspace(-1.2, 1.2, 1001)
    q = featnet.quantize_uint8(x)
    assert torch.allclose((q + 1) * 127.5, ((q + 1) * 127.5).round(), atol=1e-4)
    assert q.min() == -1.0 and q.max() == 1.0 and (q - x.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-6
    seen = []
    extractor = featnet.FeatureExtractor(lambda b: seen.append(b) or b.flatten(1), "inception", "k", 4, "cpu", 8,
                                         quantize=True)
    extractor(torch.full((2, 1, 2, 2), 0.3))
    assert torch.equal(seen[0], featnet.quantize_uint8(torch.full((2, 1, 2, 2), 0.3)))


def test_diffusion_uses_edms_noise_distribution_unless_set():
    from ict_core.objectives import build_objective

    def p_mean_std(cfg):
        objective = build_objective(cfg, 64)
        return objective.p_mean, objective.p_std

    assert p_mean_std(load_config(None, ["loss.objective=diffusion"])) == (-1.2, 1.2)
    assert p_mean_std(load_config(None, ["loss.objective=diffusion", "loss.p_mean=-1.1", "loss.p_std=2.0"])) == (-1.1, 2.0)
    assert p_mean_std(load_config()) == (-1.1, 2.0)
