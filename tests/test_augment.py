"""Colour jitter and cutoff against insightface's formulas, the newer augmentations against NumPy, and
their place in the batches."""
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
    jittered = _first_batches(sample_rec, augmentation=augment.Policy(color_jitter=0.2, cutoff=20))
    again = _first_batches(sample_rec, augmentation=augment.Policy(color_jitter=0.2, cutoff=20))
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
    cut_only = _first_batches(sample_rec, augmentation=augment.Policy(cutoff=20))
    painted = [(image == 128).all(axis=0).sum() for data, _ in cut_only for image in data]
    assert sum(p >= 10 * 10 for p in painted) >= 3  # about half the images carry a square


def test_augmentation_config_is_checked(sample_rec):
    config = load_config(None, [f"data.root={sample_rec}", "data.color_jitter=0.125", "data.cutoff=32"])
    assert config.data.color_jitter == 0.125 and config.data.cutoff == 32
    with pytest.raises(ConfigError, match="data.color_jitter"):
        load_config(None, [f"data.root={sample_rec}", "data.color_jitter=1.5"])
    with pytest.raises(ConfigError, match="data.cutoff"):
        load_config(None, [f"data.root={sample_rec}", "data.cutoff=-4"])


# ---------------------------------------------------------------------------------------------
# the newer augmentations, each against an independent NumPy computation


@pytest.fixture
def sample_image():
    """One real photo of the committed sample, RGB, 112x112."""
    import glob
    import os

    import cv2
    path = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "data", "lfw_sample", "images", "*", "*.jpg")))[0]
    return cv2.resize(cv2.imread(path)[:, :, ::-1], (112, 112), interpolation=cv2.INTER_AREA)


def _smooth_image(height=112, width=96):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [127 + 100 * np.sin(x / 9.0 + c) * np.cos(y / 13.0 - c) for c in range(3)]
    return np.stack(channels, axis=2).astype(np.float32)


def numpy_warp(image, matrix):
    """cv2.warpAffine's definition in NumPy: dst(p) = src(M^-1 p), bilinear, borders replicated."""
    height, width = image.shape[:2]
    full = np.vstack([matrix, [0, 0, 1]])
    inverse = np.linalg.inv(full)[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    sx = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
    sy = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]

    def at(yy, xx):
        return image[np.clip(yy, 0, height - 1), np.clip(xx, 0, width - 1)].astype(np.float64)

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def test_warp_matrix_zooms_and_rotates_about_the_centre_then_shifts():
    height, width = 112, 96
    cy, cx = (height - 1) / 2, (width - 1) / 2
    matrix = augment.warp_matrix(height, width, 1.2, 30.0, 3.0, -2.0)
    centre = matrix @ [cx, cy, 1]
    np.testing.assert_allclose(centre, [cx - 2.0, cy + 3.0], atol=1e-9)
    # a point r to the right of the centre goes to r * zoom at 30 degrees counter-clockwise (y points down)
    r = 10.0
    moved = matrix @ [cx + r, cy, 1] - centre
    np.testing.assert_allclose(moved, [r * 1.2 * np.cos(np.pi / 6), -r * 1.2 * np.sin(np.pi / 6)], atol=1e-9)
    np.testing.assert_allclose(augment.warp_matrix(height, width, 1.0, 0.0, 0.0, 0.0), [[1, 0, 0], [0, 1, 0]])


def test_warp_is_bilinear_with_replicated_borders():
    image = _smooth_image()
    for zoom, degrees, dy, dx in ((1.15, 12.0, 2.5, -4.0), (0.85, -7.0, -3.0, 1.5)):
        matrix = augment.warp_matrix(*image.shape[:2], zoom, degrees, dy, dx)
        ours = augment.warp(image, matrix)
        assert ours.dtype == np.float32 and ours.shape == image.shape
        # OpenCV interpolates in fixed point (1/32 pixel): within a grey level on this smooth image
        assert np.abs(ours - numpy_warp(image, matrix)).max() < 1.0
    # a whole-pixel shift is exact: the image moves and its edge row / column is repeated
    shifted = augment.warp(image, augment.warp_matrix(*image.shape[:2], 1.0, 0.0, 3.0, -2.0))
    padded = np.pad(image, ((3, 0), (0, 2), (0, 0)), mode="edge")
    np.testing.assert_array_equal(shifted, padded[:image.shape[0], 2:])


def test_grayscale_is_bt601_luma_in_every_channel():
    image = _smooth_image()
    luma = 0.299 * image[..., 0].astype(np.float64) + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    out = augment.grayscale(image)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], luma, rtol=1e-5)


def test_blur_is_a_gaussian_with_mirrored_borders():
    image = _smooth_image() + np.random.default_rng(0).uniform(-20, 20, (112, 96, 3)).astype(np.float32)
    for sigma in (0.5, 1.1, 1.5):
        radius = int(np.ceil(3 * sigma))
        taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
        taps /= taps.sum()
        padded = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
        rows = sum(taps[k] * padded[k:k + image.shape[0]] for k in range(2 * radius + 1))
        expected = sum(taps[k] * rows[:, k:k + image.shape[1]] for k in range(2 * radius + 1))
        np.testing.assert_allclose(augment.blur(image, sigma), expected, atol=1e-3)


def test_jpeg_recompression_keeps_colours_and_loses_more_at_lower_quality(sample_image):
    image = sample_image.astype(np.float32)
    errors = {q: np.abs(augment.jpeg(image, q) - image).mean() for q in (30, 90)}
    assert 0 < errors[90] < errors[30] < 10
    red = np.zeros((32, 32, 3), np.float32)
    red[..., 0] = 200
    out = augment.jpeg(red, 50)
    assert out.dtype == np.float32 and out[..., 0].mean() > 180 and out[..., 2].mean() < 20  # RGB, not BGR


def test_draws_of_the_first_two_augmentations_are_unchanged_by_the_newer_ones():
    """insightface's two draw first and as they always did (a transcription of the former draw):
    runs with colour jitter / cutoff alone see the images they saw before the others existed."""
    def former(rng, count, height, width, jitter):
        alphas = 1.0 + rng.uniform(-jitter, jitter, (count, 3))
        orders = [rng.permutation(3) for _ in range(count)]
        cuts = rng.random(count) < 0.5
        centers = np.stack([rng.integers(0, height, count), rng.integers(0, width, count)], axis=1)
        return alphas, orders, cuts, centers

    alphas, orders, cuts, centers = former(np.random.default_rng(5), 16, 112, 112, 0.2)
    for policy in (augment.Policy(color_jitter=0.2, cutoff=20),
                   augment.Policy(color_jitter=0.2, cutoff=20, rotate=10, blur=0.5, jpeg=0.5, grayscale=0.2)):
        params = augment.draw(np.random.default_rng(5), 16, 112, 112, policy)
        for i, p in enumerate(params):
            np.testing.assert_array_equal(p["alphas"], alphas[i])
            np.testing.assert_array_equal(p["order"], orders[i])
            assert p["cut"] == ((int(centers[i, 0]), int(centers[i, 1])) if cuts[i] else None)
    assert augment.draw(np.random.default_rng(5), 4, 112, 112, augment.Policy()) == [None] * 4


def test_every_augmentation_in_the_batches_is_reproducible(sample_rec):
    policy = augment.Policy(color_jitter=0.1, cutoff=16, scale_jitter=0.1, rotate=10, shift=4,
                            grayscale=0.3, blur=0.3, jpeg=0.5)
    plain = _first_batches(sample_rec)
    first = _first_batches(sample_rec, augmentation=policy)
    again = _first_batches(sample_rec, augmentation=policy)
    for (data_p, labels_p), (data_a, labels_a), (data_b, _) in zip(plain, first, again):
        np.testing.assert_array_equal(data_a, data_b)
        np.testing.assert_array_equal(labels_a, labels_p)
        assert 0 <= data_a.min() and data_a.max() <= 255 and not np.array_equal(data_a, data_p)
        gray = [np.array_equal(image[0], image[2]) and np.array_equal(image[0], image[1]) for image in data_a]
        assert any(gray) and not all(gray)


@pytest.mark.parametrize("item, key", [("data.scale_jitter=1.2", "data.scale_jitter"), ("data.rotate=-3", "data.rotate"),
                                       ("data.shift=-1", "data.shift"), ("data.blur=1.5", "data.blur"),
                                       ("data.jpeg=-0.1", "data.jpeg"), ("data.grayscale=2", "data.grayscale")])
def test_newer_augmentation_settings_are_checked(sample_rec, item, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [f"data.root={sample_rec}", item])
