"""Colour jitter and cutoff against insightface's formulas, and their place in the batches."""
import numpy as np
import pytest

from recognition.data import augment
from recognition.data.dataset import ShardedOrder, TrainBatches
from recognition.data.record import RecordDataset
from recognition.engine.config import ConfigError, load_config


def insightface_color_aug(image, alphas, order):
    """A transcription of insightface's brightness_aug / contrast_aug / saturation_aug (NumPy,
    float64, in the shuffled order), without the clipping our version adds."""
    src = image.astype(np.float64)
    coef = np.array([[[0.299, 0.587, 0.114]]])
    for which in order:
        alpha = alphas[which]
        if which == 0:
            src = src * alpha
        elif which == 1:
            gray = src * coef
            gray = (3.0 * (1.0 - alpha) / gray.size) * np.sum(gray)
            src = src * alpha + gray
        else:
            gray = np.sum(src * coef, axis=2, keepdims=True) * (1.0 - alpha)
            src = src * alpha + gray
    return src


def test_color_jitter_is_insightfaces_color_aug():
    rng = np.random.RandomState(0)
    image = rng.randint(40, 200, (12, 10, 3)).astype(np.uint8)  # mid-range: no clipping happens
    for alphas, order in (([1.1, 0.9, 1.05], [0, 1, 2]), ([0.9, 1.12, 0.95], [2, 0, 1]), ([1.0, 1.0, 1.0], [1, 2, 0])):
        ours = augment.color_jitter(image, np.array(alphas), order)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, insightface_color_aug(image, alphas, order), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(augment.color_jitter(image, np.ones(3), [0, 1, 2]), image.astype(np.float32))
    bright = augment.color_jitter(np.full((2, 2, 3), 250, np.uint8), np.array([1.2, 1.0, 1.0]), [0, 1, 2])
    assert bright.max() == 255.0  # clipped to the 0..255 input range of the networks


def test_cutoff_paints_insightfaces_square_clipped_at_the_borders():
    image = np.zeros((10, 8, 3), np.uint8)
    out = augment.cutoff(image, 5, 4, 4)  # rows 3..6, columns 2..5
    expected = np.zeros_like(image)
    expected[3:7, 2:6] = 128
    np.testing.assert_array_equal(out, expected)
    assert image.max() == 0  # the input is left alone
    corner = augment.cutoff(image, 0, 7, 6)  # rows 0..2, columns 4..7
    expected = np.zeros_like(image)
    expected[0:3, 4:8] = 128
    np.testing.assert_array_equal(corner, expected)


def _first_batches(rec, steps=2, **kwargs):
    dataset = RecordDataset(rec)
    batches = TrainBatches(dataset, ShardedOrder(dataset, 8, seed=3), num_workers=0, prefetch=0, **kwargs)
    try:
        return [next(batches) for _ in range(steps)]
    finally:
        batches.close()


def test_augmented_batches_are_reproducible_and_leave_labels_and_flips_alone(sample_rec):
    plain = _first_batches(sample_rec)
    jittered = _first_batches(sample_rec, color_jitter=0.2, cutoff=20)
    again = _first_batches(sample_rec, color_jitter=0.2, cutoff=20)
    for (data_p, labels_p), (data_j, labels_j), (data_a, labels_a) in zip(plain, jittered, again):
        np.testing.assert_array_equal(data_j, data_a)  # a function of (seed, epoch, position)
        np.testing.assert_array_equal(labels_j, labels_p)
        assert data_j.shape == data_p.shape and data_j.dtype == np.float32
        assert 0 <= data_j.min() and data_j.max() <= 255
        assert not np.array_equal(data_j, data_p)
        # the same flips: the jittered image correlates with the plain one, not with its mirror
        for a, b in zip(data_p, data_j):
            same = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            mirrored = np.corrcoef(a[:, :, ::-1].ravel(), b.ravel())[0, 1]
            assert same > mirrored
    cut_only = _first_batches(sample_rec, cutoff=20)
    painted = [(image == 128).all(axis=0).sum() for data, _ in cut_only for image in data]
    assert sum(p >= 10 * 10 for p in painted) >= 3  # about half the images carry a square


def test_augmentation_config_is_checked(sample_rec):
    config = load_config(None, [f"data.root={sample_rec}", "data.color_jitter=0.125", "data.cutoff=32"])
    assert config.data.color_jitter == 0.125 and config.data.cutoff == 32
    with pytest.raises(ConfigError, match="data.color_jitter"):
        load_config(None, [f"data.root={sample_rec}", "data.color_jitter=1.5"])
    with pytest.raises(ConfigError, match="data.cutoff"):
        load_config(None, [f"data.root={sample_rec}", "data.cutoff=-4"])
