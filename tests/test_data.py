"""Data sets load from local files with the right shapes, ranges, splits and determinism; flips; DataErrors."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ict_core.config import ConfigError, DataConfig, load_config
from ict_core.batches import GlobalBatches
from ict_core.data import load_dataset
from ict_core.data_types import DataError, Dataset, random_hflip


def data_cfg(**overrides) -> DataConfig:
    return load_config(overrides={f"data.{k}": v for k, v in overrides.items()}).data


def check_images(dataset: Dataset, channels: int, resolution: int):
    for images in (dataset.train, dataset.heldout):
        assert images.dtype == torch.float32
        assert images.shape[1:] == (channels, resolution, resolution)
        assert images.min() >= -1.0 and images.max() <= 1.0
    assert dataset.channels == channels and dataset.resolution == resolution
    assert dataset.dim == channels * resolution * resolution
    assert dataset.train_labels.shape == (dataset.train.shape[0],)
    assert dataset.heldout_labels.shape == (dataset.heldout.shape[0],)


def test_digits_shapes_range_split_and_no_flips():
    dataset = load_dataset(data_cfg(name="digits", holdout_fraction=0.1, hflip=True))
    check_images(dataset, 1, 8)
    assert dataset.train.shape[0] + dataset.heldout.shape[0] + dataset.featnet.shape[0] == 1797
    assert dataset.heldout.shape[0] == round(1797 * 0.1) and dataset.featnet.shape[0] == round(1797 * 0.25)
    assert dataset.train.min() == -1.0 and dataset.train.max() == 1.0  # 0 and 16 both occur
    assert dataset.key == "digits-8" and dataset.num_classes == 10
    assert not dataset.allows_flip and not dataset.hflip
    batch = dataset.train[:16]
    assert dataset.augment(batch, torch.Generator().manual_seed(0)) is batch
    # train, held-out and featnet parts are disjoint
    train_rows = {tuple(x.flatten().tolist()) for x in dataset.train}
    assert sum(tuple(x.flatten().tolist()) in train_rows for x in dataset.heldout) < 5  # a few exact duplicates exist
    assert sum(tuple(x.flatten().tolist()) in train_rows for x in dataset.featnet) < 10


def test_digits_split_depends_on_seed_and_caps():
    first, again = load_dataset(data_cfg(name="digits"), seed=3), load_dataset(data_cfg(name="digits"), seed=3)
    other = load_dataset(data_cfg(name="digits"), seed=4)
    assert torch.equal(first.train, again.train) and torch.equal(first.heldout, again.heldout)
    assert not torch.equal(first.heldout, other.heldout)
    capped = load_dataset(data_cfg(name="digits", max_images=100, holdout_fraction=0.25))
    assert capped.train.shape[0] == 100 and capped.heldout.shape[0] == round(1797 * 0.25)
    none_held = load_dataset(data_cfg(name="digits", holdout_fraction=0.0))
    assert none_held.heldout.shape == (0, 1, 8, 8) and none_held.train.shape[0] == 1797 - round(1797 * 0.25)
    # the featnet part is the same whatever data.seed: one feature network scores every seed
    assert torch.equal(first.featnet, other.featnet) and torch.equal(first.featnet, none_held.featnet)


def test_digits_other_resolution_resizes():
    native = load_dataset(data_cfg(name="digits"))
    big = load_dataset(data_cfg(name="digits", resolution=16))
    check_images(big, 1, 16)
    # shrinking the bilinear upsample back gives roughly the original digit
    back = F.avg_pool2d(big.train, 2)
    assert (back - native.train).abs().mean() < 0.15


def test_patches_deterministic_and_same_regions_across_resolutions():
    p8 = load_dataset(data_cfg(name="patches", resolution=8), seed=0)
    p8_again = load_dataset(data_cfg(name="patches", resolution=8), seed=0)
    p8_other = load_dataset(data_cfg(name="patches", resolution=8), seed=1)
    p64 = load_dataset(data_cfg(name="patches", resolution=64), seed=0)
    check_images(p8, 3, 8)
    check_images(p64, 3, 64)
    assert 2000 <= p8.train.shape[0] + p8.heldout.shape[0] <= 5000
    assert torch.equal(p8.train, p8_again.train) and torch.equal(p8.train_labels, p8_again.train_labels)
    assert not torch.equal(p8.train, p8_other.train)
    # the 8 px patch is the 64 px patch averaged over 8x8 blocks: the same region, only d changes
    assert torch.equal(p64.train_labels, p8.train_labels)
    assert torch.allclose(F.avg_pool2d(p64.train, 8), p8.train, atol=1e-5)
    assert p8.label_kind == "source_image" and p8.num_classes == int(p8.train_labels.max()) + 1
    assert p8.allows_flip and p8.hflip
    # patches hold structure, not flat colour
    assert (p64.train.flatten(1).std(dim=1) > 0.05).float().mean() > 0.9


def test_patches_reject_other_resolutions():
    with pytest.raises(ConfigError, match="data.resolution must be one of 8, 16, 32, 64"):
        data_cfg(name="patches", resolution=12)
    with pytest.raises(DataError, match="data.resolution must be one of 8, 16, 32, 64.*got 12"):
        load_dataset(DataConfig(name="patches", resolution=12))


def test_random_hflip_flips_some_images_reproducibly():
    images = torch.randn(64, 3, 4, 4)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    again = random_hflip(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    flipped = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, images)])
    kept = torch.tensor([torch.equal(o, x) for o, x in zip(out, images)])
    assert torch.all(flipped ^ kept)
    assert 16 <= int(flipped.sum()) <= 48


def test_dataset_augment_follows_data_hflip(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    images = torch.randn(64, 3, 32, 32)
    no_flip = load_dataset(data_cfg(name="cifar10", path=str(folder), hflip=False))
    assert no_flip.allows_flip and not no_flip.hflip
    assert no_flip.augment(images, torch.Generator().manual_seed(0)) is images
    with_flip = load_dataset(data_cfg(name="cifar10", path=str(folder), hflip=True))
    out = with_flip.augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, random_hflip(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, images)


# ---- CIFAR-10 in its python format, written by the test -----------------------------------------

def write_cifar(folder, per_batch=6, skip=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        if name == skip:
            continue
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        data[0] = 0
        data[0, :1024] = 255  # image 0: pure red, in CHW planar order
        labels = [(index + i) % 10 for i in range(per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, handle)
    return folder


def test_cifar10_parses_the_python_format(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    dataset = load_dataset(data_cfg(name="cifar10", path=str(folder)))
    check_images(dataset, 3, 32)
    # the official test batch is halved into held-out and featnet parts; training keeps every image
    assert dataset.train.shape[0] == 30 and dataset.heldout.shape[0] == 3 and dataset.featnet.shape[0] == 3
    red = [x for x in dataset.train if torch.all(x[0] == 1.0) and torch.all(x[1:] == -1.0)]
    assert len(red) == 5  # one per training batch: channel planes decoded in the right order
    assert dataset.allows_flip and dataset.num_classes == 10
    capped = load_dataset(data_cfg(name="cifar10", path=str(folder), max_images=7, resolution=16))
    check_images(capped, 3, 16)
    assert capped.train.shape[0] == 7


def test_cifar10_missing_files_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as err:
        load_dataset(data_cfg(name="cifar10", path=str(tmp_path / "nowhere")))
    assert "nowhere" in str(err.value) and "data.path" in str(err.value)
    folder = write_cifar(tmp_path / "partial", skip="data_batch_3")
    with pytest.raises(DataError, match="data_batch_3.*cifar-10-python.tar.gz"):
        load_dataset(data_cfg(name="cifar10", path=str(folder)))
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3.*not a pickled dict"):
        load_dataset(data_cfg(name="cifar10", path=str(folder)))
    with pytest.raises(DataError, match="data.path is empty"):
        load_dataset(DataConfig(name="cifar10"))


# ---- downsampled ImageNet 64x64 .npz files, written by the test ----------------------------------

def write_imagenet(folder, batches=3, per_batch=5, skip_val=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for index in range(1, batches + 1):
        data = rng.integers(0, 256, size=(per_batch, 12288), dtype=np.uint8)
        data[0] = 0
        data[0, 4096:8192] = 255  # image 0 of each batch: pure green
        np.savez(folder / f"train_data_batch_{index}.npz", data=data,
                 labels=np.arange(1, per_batch + 1) + index, mean=np.zeros(12288))
    if not skip_val:
        np.savez(folder / "val_data.npz", data=rng.integers(0, 256, size=(4, 12288), dtype=np.uint8),
                 labels=np.array([1, 2, 1000, 7]))
    return folder


def test_imagenet64_parses_npz_batches(tmp_path):
    folder = write_imagenet(tmp_path / "imagenet64")
    dataset = load_dataset(data_cfg(name="imagenet64", path=str(folder)))
    check_images(dataset, 3, 64)
    assert dataset.train.shape[0] == 15 and dataset.heldout.shape[0] == 2 and dataset.featnet.shape[0] == 2
    # 1-based labels shifted to 0-based
    assert sorted(dataset.heldout_labels.tolist() + dataset.featnet_labels.tolist()) == [0, 1, 6, 999]
    green = [x for x in dataset.train if torch.all(x[1] == 1.0) and torch.all(x[0] == -1.0)]
    assert len(green) == 3
    capped = load_dataset(data_cfg(name="imagenet64", path=str(folder), max_images=4, resolution=32))
    check_images(capped, 3, 32)
    assert capped.train.shape[0] == 4 and capped.train_labels.max() <= 5  # only batch 1 was needed


def test_imagenet64_missing_files_explain_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="Downsampled ImageNet.*data.path"):
        load_dataset(data_cfg(name="imagenet64", path=str(tmp_path)))
    folder = write_imagenet(tmp_path / "no_val", skip_val=True)
    with pytest.raises(DataError, match="val_data.npz"):
        load_dataset(data_cfg(name="imagenet64", path=str(folder)))
    np.savez(folder / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([1, 2]))
    with pytest.raises(DataError, match="N x 12288"):
        load_dataset(data_cfg(name="imagenet64", path=str(folder)))


def test_global_batches_of_two_ranks_are_the_halves_of_one_ranks_batch():
    """Every rank draws the global batch's indices and flips from the same seed and keeps its rows, so the ranks'
    slices put together are the one-rank batch, draw after draw; the state resumes the stream."""
    dataset = load_dataset(data_cfg(name="patches", resolution=8, hflip=True))
    assert dataset.hflip
    cpu = torch.device("cpu")
    one = GlobalBatches(dataset, 8, 0, 1, seed=3, device=cpu)
    ranks = [GlobalBatches(dataset, 8, rank, 2, seed=3, device=cpu) for rank in (0, 1)]
    assert [b.rows for b in ranks] == [(0, 4), (4, 8)] and one.noise_generator is one.generator
    for _ in range(3):
        assert torch.equal(one.draw(), torch.cat([b.draw() for b in ranks]))
    state = one.state_dict()
    assert state["noise_generator"] is None  # on the CPU the noise shares the batch generator
    expected = one.draw()
    fresh = GlobalBatches(dataset, 8, 0, 1, seed=99, device=cpu)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.draw(), expected)
