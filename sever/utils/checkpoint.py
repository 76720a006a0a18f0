"""Checkpoint files: atomic writes and safe, validated reads.

A checkpoint is a dict of tensors and plain Python types only, so it loads
with ``torch.load(weights_only=True)``; files that need arbitrary pickles are
refused rather than executed.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from sever.exceptions import CheckpointError, first_line

logger = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("state_dict", "config", "epoch")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never a
    truncated mix (a killed save leaves a ``.NAME.PID.tmp`` that
    :func:`remove_stale_temporaries` clears).

    Raises:
        CheckpointError: the file cannot be written (disk full, no permission);
            the previous ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = f"; {path} is unchanged" if path.exists() else ""
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}{kept}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete the partial ``.NAME.PID.tmp`` files that killed saves left in ``directory``.

    Call it only when no other process writes to ``directory`` (e.g. when resuming a run).
    """
    for tmp in Path(directory).glob(".*.tmp"):
        logger.info("removing %s, left by an interrupted save", tmp)
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Read a sever checkpoint with ``weights_only=True`` and check its layout.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the
    config is wanted.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, needs
            arbitrary pickles, or is not a sever checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file needs arbitrary Python objects to unpickle, "
            f"which could run code. sever checkpoints hold only tensors and plain types; "
            f"this one was not written by sever or comes from an untrusted source. ({first_line(exc)})"
        ) from exc
    # A damaged file makes torch.load raise many kinds (RuntimeError, EOFError, BadZipFile,
    # KeyError, IndexError, ...); all mean the same to the user.
    except Exception as exc:
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if (
        not isinstance(state, dict)
        or any(key not in state for key in CHECKPOINT_KEYS)
        or not isinstance(state["config"], dict)
        or not isinstance(state["epoch"], int)
    ):
        raise CheckpointError(
            f"{path}: not a sever checkpoint (expected a dict with keys {', '.join(CHECKPOINT_KEYS)}, "
            "config a mapping and epoch an integer)"
        )
    return state


