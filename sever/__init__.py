"""sever: steel-surface defect segmentation on PyTorch."""

__version__ = "0.1.0"
