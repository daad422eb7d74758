"""Rebuild tests/data/lfw_sample from ../shared/data/lfw-devtrain (the committed demo/test sample).

Train people: the first 100 people (sorted by name) with at least 6 images, 6 images each.
Verification people: people with 2-4 images that are not train people; 150 same pairs (images 1, 2)
and 150 different pairs among the same people's photos, written as LFW-format pairs.txt. Photos are cropped to the central
128x128 (where the faces are) and re-encoded at JPEG quality 85 to keep the sample small; the
landmarks are shifted by the crop offset.

    python tests/data/make_lfw_sample.py [--src ../shared/data/lfw-devtrain]
"""
import argparse
import os
import random
import shutil

import cv2

CROP_OFFSET, CROP_SIZE, QUALITY = 11, 128, 85


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=os.path.join(here, "..", "..", "..", "shared", "data", "lfw-devtrain"))
    parser.add_argument("--out", default=os.path.join(here, "lfw_sample"))
    args = parser.parse_args()

    landmarks = {}
    with open(os.path.join(args.src, "landmarks.txt")) as f:
        for line in f:
            if not line.startswith("#"):
                parts = line.rstrip("\n").split("\t")
                landmarks[parts[0]] = [float(v) for v in parts[1:]]
    people = {}
    with open(os.path.join(args.src, "peopleDevTrain.txt")) as f:
        next(f)
        for line in f:
            name, count = line.split()
            people[name] = int(count)
    names = sorted(people)
    train = [n for n in names if people[n] >= 6][:100]
    val_people = [n for n in names if 2 <= people[n] <= 4 and n not in train]
    rng = random.Random(0)
    rng.shuffle(val_people)
    same = val_people[:150]
    # different pairs reuse the same-pair people's photos (person i, image 1 with person i+1, image 2)
    diff = [(same[i], 1, same[(i + 1) % 150], 2) for i in range(150)]

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(os.path.join(args.out, "images"))
    rows = []

    def copy(name, index):
        rel = f"{name}/{name}_{index:04d}.jpg"
        dst = os.path.join(args.out, "images", rel)
        if os.path.exists(dst):
            return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        image = cv2.imread(os.path.join(args.src, "images", rel))
        crop = image[CROP_OFFSET:CROP_OFFSET + CROP_SIZE, CROP_OFFSET:CROP_OFFSET + CROP_SIZE]
        cv2.imwrite(dst, crop, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        points = [v - CROP_OFFSET for v in landmarks[rel]]
        rows.append(rel + "\t" + "\t".join(f"{v:.1f}" for v in points))

    for name in train:
        for i in range(1, 7):
            copy(name, i)
    for name in same:
        copy(name, 1)
        copy(name, 2)
    for a, i, b, j in diff:
        copy(a, i)
        copy(b, j)
    with open(os.path.join(args.out, "landmarks.txt"), "w") as f:
        f.write("# path\tx1\ty1\tx2\ty2\tx3\ty3\tx4\ty4\tx5\ty5  (pixels of these 128x128 crops)\n")
        f.write("\n".join(sorted(rows)) + "\n")
    with open(os.path.join(args.out, "train_people.txt"), "w") as f:
        f.write("\n".join(train) + "\n")
    with open(os.path.join(args.out, "pairs.txt"), "w") as f:
        f.write("300\n")
        f.writelines(f"{n}\t1\t2\n" for n in same)
        f.writelines(f"{a}\t{i}\t{b}\t{j}\n" for a, i, b, j in diff)
    print(f"{len(train)} train people, {len(rows)} images, 150 same + 150 different pairs -> {args.out}")


if __name__ == "__main__":
    main()
