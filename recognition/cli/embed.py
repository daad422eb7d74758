"""Embeddings of a folder of face images or of an insightface .rec, with an exported model.

Writes OUT.npy (float32, one row per image, in index order) and an index (tsv with a header:
row, path or record index, label). For a folder the label is the image's top-level sub-folder
(the identity) and images are read in sorted path order; for a .rec it is the record's identity.
Images are aligned with --landmarks when given (or with the five points MTCNN finds: --detect; an
image without a face stops the run, naming it), else taken as aligned and resized.
"""
import argparse
import os
import sys

import numpy as np

from recognition.cli.detect import add_detector_args, detector_options
from recognition.data.align import read_landmarks, to_size
from recognition.data.detect import NoFaceError
from recognition.data.record import RecordDataset, RecordError
from recognition.evaluation import FLIP_MODES, embed_images
from recognition.cli.make_bin import IMAGE_EXTENSIONS, load_face
from recognition.data.pack import list_images
from recognition.evaluation.embed import ModelError, auto_context, load_exported_model


class EmbedError(ValueError):
    pass


def folder_source(root, landmarks, size, detector=None):
    """(index rows, loader of a slice -> uint8 NHWC) for an image folder; ``detector`` aligns the
    images without landmarks on the face it finds."""
    paths = list_images(root, IMAGE_EXTENSIONS)
    if not paths:
        raise EmbedError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    landmarks = {os.path.normpath(k).replace(os.sep, "/"): v for k, v in (landmarks or {}).items()}
    rows = [(rel, rel.split("/")[0] if "/" in rel else "") for rel in paths]

    def load(start, stop):
        faces = []
        for rel in paths[start:stop]:
            try:
                face = load_face(os.path.join(root, rel), landmarks.get(rel), size, detector)
            except NoFaceError:
                raise EmbedError(f"{os.path.join(root, rel)}: no face detected") from None
            if face is None:
                raise EmbedError(f"{os.path.join(root, rel)}: cannot be decoded as an image")
            faces.append(face)
        return np.stack(faces)
    return rows, load


def rec_source(root, size):
    """(index rows, loader) for an insightface RecordIO dataset folder."""
    dataset = RecordDataset(root)
    indices = dataset.image_indices
    labels = dataset.label_array()
    rows = [(str(int(i)), str(int(label))) for i, label in zip(indices, labels)]

    def load(start, stop):
        return np.stack([to_size(dataset.read_image(int(i))[0], size) for i in indices[start:stop]])
    return rows, load


def build_parser():
    parser = argparse.ArgumentParser(prog="embed.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="PREFIX[,EPOCH]", help="exported model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="folder of face images (identity sub-folders)")
    source.add_argument("--rec", metavar="DIR", help="insightface dataset folder (train.rec/.idx/property)")
    parser.add_argument("--out", required=True, metavar="OUT.npy", help="embeddings file")
    parser.add_argument("--index", metavar="OUT.tsv", help="index file (default: OUT with .tsv)")
    points = parser.add_mutually_exclusive_group()
    points.add_argument("--landmarks", metavar="FILE", help="five-point landmarks for --images (paths relative to DIR)")
    points.add_argument("--detect", action="store_true",
                        help="for --images: detect the five points (MTCNN) instead of a landmarks file, "
                             "then align the same way")
    parser.add_argument("--flip", choices=FLIP_MODES, default="sum", help="flip fusion (default sum)")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the rows")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--chunk", type=int, default=2048, help="images decoded at a time (default 2048)")
    parser.add_argument("--image-size", type=int, default=112, help="model input size (default 112)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_detector_args(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.chunk < 1:
        sys.exit("embed: --batch-size and --chunk must be positive")
    if args.rec and args.detect:
        sys.exit("embed: --detect applies to --images (a .rec holds aligned faces)")
    index_path = args.index or os.path.splitext(args.out)[0] + ".tsv"
    tmp_out, tmp_index = f"{args.out}.tmp{os.getpid()}.npy", f"{index_path}.tmp{os.getpid()}"
    ctx = auto_context(False if args.cpu else None)
    try:
        net, _ = load_exported_model(args.model, ctx)
        if args.images:
            if not os.path.isdir(args.images):
                raise EmbedError(f"{args.images}: image folder not found")
            landmarks = read_landmarks(args.landmarks) if args.landmarks else None
            detector = None
            if args.detect:
                from recognition.data.detect import FaceDetector
                detector = FaceDetector(**detector_options(args))
            rows, load = folder_source(args.images, landmarks, args.image_size, detector)
        else:
            rows, load = rec_source(args.rec, args.image_size)
        n = len(rows)
        output = None
        progress = None
        if not args.no_progress:
            from tqdm import tqdm
            progress = tqdm(total=n, desc="embed", unit="img")
        for start in range(0, n, args.chunk):
            stop = min(start + args.chunk, n)
            emb = embed_images(net, load(start, stop), args.batch_size, args.flip, ctx)
            if args.normalize:
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            if output is None:  # the width is known after the first chunk
                output = np.lib.format.open_memmap(tmp_out, mode="w+", dtype=np.float32, shape=(n, emb.shape[1]))
            output[start:stop] = emb
            if progress is not None:
                progress.update(stop - start)
        if progress is not None:
            progress.close()
        output.flush()
        del output
        with open(tmp_index, "w") as f:
            f.write("row\t" + ("path" if args.images else "record") + "\tlabel\n")
            for row, (source, label) in enumerate(rows):
                f.write(f"{row}\t{source}\t{label}\n")
        os.replace(tmp_out, args.out)
        os.replace(tmp_index, index_path)
    except (EmbedError, ModelError, RecordError, ValueError, ImportError, OSError) as err:
        sys.exit(f"embed: {err}")
    finally:
        for tmp in (tmp_out, tmp_index):
            if os.path.exists(tmp):
                os.remove(tmp)
    print(f"wrote {args.out} ({n} x {np.load(args.out, mmap_mode='r').shape[1]}) and {index_path}")


if __name__ == "__main__":
    main()
