"""sever: steel-surface defect segmentation on PyTorch."""

import os

# albumentations asks PyPI for a newer version when first imported; offline (mills, Kaggle
# kernels) that prints a warning on every command. Every entry point imports this package
# first, so the check is off before albumentations loads, unless the user asked for it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
