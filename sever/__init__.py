"""sever: steel-surface defect segmentation on PyTorch.

The Python API (``sever.load``, ``sever.train``, ``sever.auto``, ``sever.evaluate``,
``sever.tune``) lives in :mod:`sever.api`; its names are imported on first use, so
``import sever`` stays light (no torch until a name is used).
"""

import os
from importlib import import_module
from typing import Any

# albumentations asks PyPI for a newer version when first imported; offline (mills, Kaggle
# kernels) that prints a warning on every command. Every entry point imports this package
# first, so the check is off before albumentations loads, unless the user asked for it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

# Public name -> the module of sever.api that defines it.
_PUBLIC = {
    "load": "sever.api.model",
    "Model": "sever.api.model",
    "Result": "sever.api.results",
    "Results": "sever.api.results",
    "train": "sever.api.training",
    "auto": "sever.api.training",
    "Run": "sever.api.training",
    "AutoRun": "sever.api.training",
    "evaluate": "sever.api.scoring",
    "tune": "sever.api.scoring",
    "Scores": "sever.api.scoring",
    "Tuning": "sever.api.scoring",
    "SeverError": "sever.exceptions",
}

__all__ = ["__version__", *_PUBLIC]

# Type checkers and IDEs read the names' types from __init__.pyi beside this file.


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sever' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
