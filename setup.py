"""Install sever and its `sever` console command."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    for line in (ROOT / "sever" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("sever/__init__.py has no __version__")


setup(
    name="sever",
    version=read_version(),
    description="Steel-surface defect segmentation on PyTorch: Severstal's winning recipe as a framework",
    long_description=(ROOT / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["sever", "sever.*"]),
    package_data={"sever": ["utils/*.yml"]},
    install_requires=[
        "torch>=2.1,<=2.14.1",
        "torchvision>=0.16",
        "segmentation-models-pytorch>=0.6,<0.7",
        "albumentations>=2.0,<2.1",
        "opencv-python-headless>=4.8",
        "click>=8.1",
        "pyyaml>=6.0",
        "tensorboard>=2.14",
        "numpy>=1.24",
        "pandas>=2.0",
        "tqdm>=4.65",
    ],
    extras_require={
        "test": ["pytest>=7.4", "hypothesis>=6.90", "docutils>=0.20", "torchmetrics>=1.4", "pycocotools>=2.0.7",
                 "onnx>=1.15", "onnxruntime>=1.17"],
        "kaggle": ["kaggle>=1.6", "six"],  # kaggle 2.2 imports six without declaring it
        "detection": ["torchmetrics>=1.4", "pycocotools>=2.0.7"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        "dev": ["mutmut==3.8.1"],  # tools/mutation.py; 3.3 breaks on pytest 9 (Function._nodeid)
    },
    entry_points={"console_scripts": ["sever=sever.cli:cli"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
