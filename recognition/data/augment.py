"""Training-time image augmentations beyond the flip, as insightface's MXNet data iterator has them.

Both work on one aligned HxWx3 RGB image and take their random draws as arguments, so the batch
maker can draw them from the (seed, epoch, position) generator and a resumed run sees the same
augmented images as an uninterrupted one.

- ``color_jitter`` is insightface's ``color_aug`` (``data_color``): brightness, contrast and
  saturation, each scaled by its own factor ``alpha`` in 1 +- x, applied in a random order.
- ``cutoff`` is insightface's ``data_cutoff``: a square of side ``size``, centred on a random
  pixel and clipped at the borders, is painted mid-grey (Cutout).
"""
import numpy as np

# ITU-R BT.601 luma weights for R, G, B (insightface's coef)
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
CUTOFF_FILL = 128.0


def _brightness(image, alpha):
    return image * alpha


def _contrast(image, alpha):
    # every pixel moves towards the mean grey level of the whole image
    mean_gray = (image * GRAY_WEIGHTS).sum() / (image.shape[0] * image.shape[1])
    return image * alpha + (1.0 - alpha) * mean_gray


def _saturation(image, alpha):
    # every pixel moves towards its own grey level
    gray = (image * GRAY_WEIGHTS).sum(axis=2, keepdims=True)
    return image * alpha + (1.0 - alpha) * gray


COLOR_OPS = (_brightness, _contrast, _saturation)


def color_jitter(image, alphas, order):
    """float32 image after brightness, contrast and saturation with factors ``alphas`` (3,), the
    three applied in ``order`` (a permutation of 0, 1, 2), clipped to 0..255."""
    out = image.astype(np.float32)
    for which in order:
        out = COLOR_OPS[which](out, float(alphas[which]))
    return np.clip(out, 0.0, 255.0, out=out)


def cutoff(image, center_y, center_x, size):
    """A copy of ``image`` with rows center_y +- size//2 and columns center_x +- size//2 (end
    excluded, clipped at the borders, as insightface) set to mid-grey."""
    out = np.array(image, copy=True)
    half = size // 2
    out[max(center_y - half, 0):center_y + half, max(center_x - half, 0):center_x + half] = CUTOFF_FILL
    return out


def draw(rng, count, height, width, jitter, cutoff_size):
    """The random parameters of ``count`` images: a list of (alphas, order, cut square or None),
    or None per image when neither augmentation is on."""
    if jitter <= 0 and cutoff_size <= 0:
        return [None] * count
    alphas = 1.0 + rng.uniform(-jitter, jitter, (count, 3)) if jitter > 0 else np.ones((count, 3))
    orders = [rng.permutation(3) for _ in range(count)]
    cuts = rng.random(count) < 0.5  # insightface cuts half of the images
    centers = np.stack([rng.integers(0, height, count), rng.integers(0, width, count)], axis=1)
    return [(alphas[i] if jitter > 0 else None, orders[i],
             (int(centers[i, 0]), int(centers[i, 1])) if cutoff_size > 0 and cuts[i] else None)
            for i in range(count)]


def apply(image, params, cutoff_size):
    """``image`` (HxWx3) with the augmentations of ``params`` (one entry of ``draw``)."""
    if params is None:
        return image
    alphas, order, cut = params
    if alphas is not None:
        image = color_jitter(image, alphas, order)
    if cut is not None:
        image = cutoff(image, cut[0], cut[1], cutoff_size)
    return image
