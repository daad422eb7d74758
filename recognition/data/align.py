"""Five-point face alignment onto the ArcFace 112x112 template (insightface's ``norm_crop``)."""
import cv2
import numpy as np

# left eye, right eye, nose tip, left mouth corner, right mouth corner (insightface arcface_dst)
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src, dst):
    """Least-squares similarity transform (Umeyama 1991) mapping ``src`` points onto ``dst``.

    Returns the 2x3 matrix M with dst ~= M @ [x, y, 1]. Same estimate as skimage's
    SimilarityTransform used by insightface, without the dependency.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def template_for(size=112):
    """The ArcFace template scaled to a ``size`` x ``size`` crop (insightface scales by size/112)."""
    return ARCFACE_TEMPLATE * (size / 112.0)


def align_face(image, landmarks, size=112):
    """Warp ``image`` so that its five ``landmarks`` (5x2, x then y) land on the template."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix = similarity_transform(landmarks, template_for(size))
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def to_size(image, size=112):
    """An already-aligned face resized to ``size`` x ``size`` if needed."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def parse_landmark_line(line):
    """``path<TAB>x1 y1 ... x5 y5`` (the lfw-devtrain landmarks.txt format) -> (path, 5x2 array)."""
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 11:
        raise ValueError(f"expected a path and 10 numbers, got {len(parts)} fields")
    return parts[0], np.array([float(v) for v in parts[1:]]).reshape(5, 2)


def read_landmarks(path):
    """Landmarks file -> {relative image path: 5x2 array}. Raises ValueError naming the line."""
    result = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                name, points = parse_landmark_line(line)
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: {err}") from None
            result[name] = points
    return result
