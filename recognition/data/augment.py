"""Training-time image augmentations beyond the flip.

All work on one aligned HxWx3 RGB image and take their random draws as arguments, so the batch
maker can draw them from the (seed, epoch, position) generator and a resumed run sees the same
augmented images as an uninterrupted one. ``Policy`` holds the settings (``data.*`` in the
config), ``draw`` the random parameters of a batch, ``apply`` one image's. Order: the geometric
warp, colour, grayscale, blur, JPEG, then the cutoff square (so the square stays sharp and grey).

insightface's MXNet data iterator has two of them:

- ``color_jitter`` is insightface's ``color_aug`` (``data_color``): brightness, contrast and
  saturation, each scaled by its own factor ``alpha`` in 1 +- x, applied in a random order.
- ``cutoff`` is insightface's ``data_cutoff``: a square of side ``size``, centred on a random
  pixel and clipped at the borders, is painted mid-grey (Cutout).

The others are the usual small-data regularisers for aligned crops (arcface_torch and gluon-face
leave them to the user):

- ``warp``: one affine map about the image centre: a zoom in 1 +- ``scale_jitter`` (a random
  resized crop at the fixed aspect ratio of an aligned face), a rotation in +- ``rotate``
  degrees, a shift in +- ``shift`` pixels; bilinear, borders replicated.
- ``grayscale``: with probability p, the BT.601 luma in all three channels.
- ``blur``: with probability p, a Gaussian blur of sigma in [0.5, 1.5] (a softer camera).
- ``jpeg``: with probability p, re-compression at a quality in [30, 90] (web photos).
"""
import dataclasses

import cv2
import numpy as np

# ITU-R BT.601 luma weights for R, G, B (insightface's coef)
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
CUTOFF_FILL = 128.0
BLUR_SIGMAS = (0.5, 1.5)
JPEG_QUALITIES = (30, 90)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which augmentations are on and how strong (0 everywhere: none)."""
    color_jitter: float = 0.0   # factors in 1 +- x
    cutoff: int = 0             # side of the grey square (half of the images)
    scale_jitter: float = 0.0   # zoom in 1 +- x
    rotate: float = 0.0         # degrees, +-
    shift: float = 0.0          # pixels, +-
    grayscale: float = 0.0      # probability
    blur: float = 0.0           # probability
    jpeg: float = 0.0           # probability

    @property
    def active(self):
        return any(getattr(self, f.name) for f in dataclasses.fields(self))

    @property
    def warps(self):
        return bool(self.scale_jitter or self.rotate or self.shift)


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


def warp_matrix(height, width, zoom, degrees, shift_y, shift_x):
    """2x3 affine map (cv2 convention: destination <- source) that zooms by ``zoom`` and rotates by
    ``degrees`` (counter-clockwise) about the image centre, then shifts by (shift_x, shift_y) px."""
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    theta = np.deg2rad(degrees)
    a, b = zoom * np.cos(theta), zoom * np.sin(theta)
    return np.array([[a, b, (1 - a) * cx - b * cy + shift_x],
                     [-b, a, b * cx + (1 - a) * cy + shift_y]], np.float64)


def warp(image, matrix):
    """``image`` through the affine ``matrix`` (bilinear, borders replicated), float32."""
    height, width = image.shape[:2]
    return cv2.warpAffine(np.ascontiguousarray(image, np.float32), matrix, (width, height),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def grayscale(image):
    """The BT.601 luma of ``image`` in all three channels, float32."""
    gray = (np.asarray(image, np.float32) * GRAY_WEIGHTS).sum(axis=2, keepdims=True)
    return np.repeat(gray, 3, axis=2)


def blur(image, sigma):
    """Gaussian blur of ``sigma`` (kernel 2 * ceil(3 sigma) + 1, mirrored borders), float32."""
    size = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (size, size), sigma,
                            borderType=cv2.BORDER_REFLECT_101)


def jpeg(image, quality):
    """``image`` encoded as JPEG at ``quality`` and decoded again, float32 (RGB kept)."""
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # cannot happen for a valid HxWx3 uint8 image; never drop a training image for it
        return np.asarray(image, np.float32)
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32)


def draw(rng, count, height, width, policy):
    """The random parameters of ``count`` images under ``policy``: one dict per image (None when
    nothing is on). Draws of the newer augmentations come after insightface's two, and only when
    on, so runs with colour jitter / cutoff alone see the same images as before they existed."""
    if not policy.active:
        return [None] * count
    jitter, cutoff_size = policy.color_jitter, policy.cutoff
    alphas = 1.0 + rng.uniform(-jitter, jitter, (count, 3)) if jitter > 0 else np.ones((count, 3))
    orders = [rng.permutation(3) for _ in range(count)]
    cuts = rng.random(count) < 0.5  # insightface cuts half of the images
    centers = np.stack([rng.integers(0, height, count), rng.integers(0, width, count)], axis=1)
    params = [{"alphas": alphas[i] if jitter > 0 else None, "order": orders[i],
               "cut": (int(centers[i, 0]), int(centers[i, 1])) if cutoff_size > 0 and cuts[i] else None}
              for i in range(count)]
    if policy.warps:
        zooms = 1.0 + rng.uniform(-policy.scale_jitter, policy.scale_jitter, count)
        angles = rng.uniform(-policy.rotate, policy.rotate, count)
        shifts = rng.uniform(-policy.shift, policy.shift, (count, 2))
        for i, p in enumerate(params):
            p["warp"] = warp_matrix(height, width, zooms[i], angles[i], shifts[i, 0], shifts[i, 1])
    if policy.grayscale:
        for p, on in zip(params, rng.random(count) < policy.grayscale):
            p["gray"] = bool(on)
    if policy.blur:
        on, sigmas = rng.random(count) < policy.blur, rng.uniform(*BLUR_SIGMAS, count)
        for i, p in enumerate(params):
            p["blur"] = float(sigmas[i]) if on[i] else None
    if policy.jpeg:
        on, qualities = rng.random(count) < policy.jpeg, rng.integers(JPEG_QUALITIES[0], JPEG_QUALITIES[1] + 1, count)
        for i, p in enumerate(params):
            p["jpeg"] = int(qualities[i]) if on[i] else None
    return params


def apply(image, params, policy):
    """``image`` (HxWx3) with the augmentations of ``params`` (one entry of ``draw``)."""
    if params is None:
        return image
    if params.get("warp") is not None:
        image = warp(image, params["warp"])
    if params["alphas"] is not None:
        image = color_jitter(image, params["alphas"], params["order"])
    if params.get("gray"):
        image = grayscale(image)
    if params.get("blur"):
        image = blur(image, params["blur"])
    if params.get("jpeg"):
        image = jpeg(image, params["jpeg"])
    if params["cut"] is not None:
        image = cutoff(image, params["cut"][0], params["cut"][1], policy.cutoff)
    return image
