from setuptools import find_packages, setup

setup(
    name="recognition",
    version="0.1.0",
    description="Face-recognition training toolkit: RecordIO packing, Gluon models, paper losses, Horovod",
    packages=find_packages(include=["recognition", "recognition.*"]),
    python_requires=">=3.8",
    install_requires=["numpy<1.24", "gluoncv", "mxboard", "opencv-python", "tqdm", "pyyaml", "scipy"],
    extras_require={"cpu": ["mxnet==1.9.1"], "gpu": ["mxnet-cu112==1.9.1"], "horovod": ["horovod==0.28.1"]},
    entry_points={"console_scripts": [
        "rec-pack=recognition.cli.pack_rec:main",
        "rec-make-bin=recognition.cli.make_bin:main",
        "rec-train=recognition.cli.train:main",
        "rec-verify=recognition.cli.verify:main",
    ]},
)
