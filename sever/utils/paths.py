"""Output paths checked before a long computation, so a bad ``-o`` is refused before any work."""

from __future__ import annotations

import os
from pathlib import Path

from sever.exceptions import ConfigError


def check_output_path(path: str | Path, key: str, folder: bool = False) -> Path:
    """``path`` as a Path when a file (``folder``: a folder) can be written there; ConfigError naming ``key``
    and the culprit otherwise: an ancestor that is a file, a place this user may not write, a folder where
    a file is to go (or a file where a folder is to go).

    Nothing is created: the folders missing on the way are made when the output is written.
    """
    path = Path(path)
    existing = next((parent for parent in path.parents if parent.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{key} {path}: cannot write it: {existing} is a file, not a folder")
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{key} {path}: cannot write it: a file is there, not a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{key} {path}: cannot write it: a folder is there, not a file")
        existing = path if folder else path.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path}: cannot write it: {existing} is not writable")
    return path
