"""Alignment puts the landmarks on the template; packing real photos gives sorted identities."""
import os
import subprocess
import sys

import cv2
import numpy as np

from conftest import ROOT, SAMPLE, train_people
from recognition.data.align import ARCFACE_TEMPLATE, align_face, read_landmarks, similarity_transform
from recognition.data.pack import pack
from recognition.data.record import RecordDataset


def test_similarity_transform_recovers_exact_similarity():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (ARCFACE_TEMPLATE @ rotation.T) * scale + shift
    matrix = similarity_transform(src, ARCFACE_TEMPLATE)
    assert np.abs(np.c_[src, np.ones(5)] @ matrix.T - ARCFACE_TEMPLATE).max() < 1e-6


def test_aligned_image_moves_marked_points_onto_template():
    """Draw dots at the landmarks of a real photo, align, find the dots: within 1 pixel of the template."""
    landmarks = read_landmarks(os.path.join(SAMPLE, "landmarks.txt"))
    name = sorted(landmarks)[0]
    image = np.zeros((128, 128, 3), np.uint8)
    angle, scale = 0.2, 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (ARCFACE_TEMPLATE - 56) @ rotation.T * scale + 64  # an exact similarity image of the template
    for k, (x, y) in enumerate(points):
        image[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2, k % 3] = 255
    aligned = align_face(image, points)
    for k, (x, y) in enumerate(ARCFACE_TEMPLATE):
        channel = aligned[:, :, k % 3].astype(float)
        window = channel[int(y) - 4:int(y) + 5, int(x) - 4:int(x) + 5]
        ys, xs = np.mgrid[int(y) - 4:int(y) + 5, int(x) - 4:int(x) + 5]
        centre = np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()
        assert np.abs(centre - np.round(points[k]) + points[k] - [x, y]).max() < 1.0, name


def test_pack_sorted_identities_deterministic(tmp_path, sample_train_src):
    landmarks = os.path.join(SAMPLE, "landmarks.txt")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    counts = pack(sample_train_src, a, landmarks=landmarks, workers=2, progress=False)
    pack(sample_train_src, b, landmarks=landmarks, workers=1, progress=False)
    assert counts["identities"] == 20 and counts["images"] == 120
    for name in ("train.rec", "train.idx", "property"):
        assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read()
    dataset = RecordDataset(a)
    people = sorted(train_people()[:20])
    for identity, first, last in dataset.identity_ranges:
        assert last - first == 6
    # identity 3's first image is people[3]'s first photo, aligned
    image, label = dataset.read_image(dataset.identity_ranges[3].first)
    source = cv2.cvtColor(cv2.imread(os.path.join(SAMPLE, "images", people[3], f"{people[3]}_0001.jpg")), cv2.COLOR_BGR2RGB)
    expected = align_face(source, read_landmarks(landmarks)[f"{people[3]}/{people[3]}_0001.jpg"])
    assert label == 3 and np.abs(image.astype(int) - expected.astype(int)).mean() < 6


def test_unsorted_lst_gives_sorted_identities(tmp_path, sample_train_src):
    people = sorted(train_people()[:3])
    lines = []
    for label, name in [(7, people[2]), (3, people[0]), (7, people[2]), (5, people[1])]:
        for k in (1, 2):
            lines.append(f"1\t{os.path.join(SAMPLE, 'images', name, f'{name}_{k:04d}.jpg')}\t{label}")
    lst = tmp_path / "train.lst"
    lst.write_text("\n".join(sorted(set(lines), reverse=True)) + "\n")
    pack(str(lst), str(tmp_path / "out"), landmarks=None, progress=False)
    dataset = RecordDataset(str(tmp_path / "out"))
    assert dataset.num_classes == 3
    assert list(dataset.label_array()) == [0, 0, 1, 1, 2, 2]


def test_min_images_and_cli(tmp_path, sample_train_src):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pack_rec.py"), sample_train_src, str(out),
                             "--landmarks", os.path.join(SAMPLE, "landmarks.txt"), "--min-images", "7",
                             "--no-progress"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "no identity has 7 or more usable images" in result.stderr
    assert not out.exists() or not os.listdir(out)
    help_text = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pack_rec.py"), "--help"],
                               capture_output=True, text=True).stdout
    assert "--min-images" in help_text and "--landmarks" in help_text
