"""Publish chosen checkpoints of a run as a Kaggle dataset (``sever upload``).

The competition ran inference in offline Kaggle kernels that read weights from
datasets. An upload has three steps, each a function here:

1. :func:`plan_upload` checks everything it can without writing: the run
   folder, the chosen epochs, the dataset id, title and licence, and (when
   sending) that the ``kaggle`` command and credentials are there.
2. :func:`stage` fills a staging folder with copies of the run's
   ``config.yaml`` and checkpoints (or new weights-only files) and a
   ``dataset-metadata.json``. The run folder is only ever read.
3. :func:`remote_action` asks ``kaggle datasets status`` whether the dataset
   exists (before staging, so refused credentials show at once), and
   :func:`publish` sends the folder with ``kaggle datasets create`` or
   ``kaggle datasets version``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from sever import __version__
from sever.exceptions import SeverError
from sever.utils.run import RunPaths

logger = logging.getLogger(__name__)

METADATA_FILE = "dataset-metadata.json"
INSTALL_HINT = "pip install 'sever[kaggle]'"
# What inference needs; everything else in a checkpoint is for resuming training.
INFERENCE_KEYS = ("sever_version", "arch", "epoch", "state_dict", "ema_state_dict", "config", "monitor_best")
# Licence names Kaggle accepts in dataset-metadata.json (its datasets_metadata.md).
KAGGLE_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
    "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
    "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
)
# Kaggle: titles and slugs of 6 to 50 characters; slugs of lowercase letters, digits and '-';
# owner (user or organisation) slugs may also hold '_'.
MIN_NAME, MAX_NAME = 6, 50
SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SLUG_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


@dataclass(frozen=True)
class UploadPlan:
    """What to send: checked, nothing written yet."""

    run: RunPaths
    checkpoints: tuple[Path, ...]  # files inside the run's checkpoints/ folder
    dataset_id: str  # "user/slug"
    title: str
    license_name: str
    weights_only: bool
    staging: Path | None  # an empty (or absent) folder outside the run; None: a temporary one


@dataclass(frozen=True)
class StagedFile:
    """One file in the staging folder; sizes in bytes (``source_bytes`` None for generated files)."""

    name: str
    source_bytes: int | None
    staged_bytes: int


@dataclass(frozen=True)
class Staged:
    """A filled staging folder, ready for ``kaggle datasets create/version -p folder``."""

    plan: UploadPlan
    folder: Path
    files: tuple[StagedFile, ...]


@dataclass(frozen=True)
class Published:
    """The ``kaggle`` command that ran (``action`` is ``create`` or ``version``) and what it printed."""

    action: str
    output: str


@dataclass(frozen=True)
class KaggleCredentials:
    """Credentials the ``kaggle`` command will find; ``username`` is None for a bare access token."""

    username: str | None
    source: str


# ---------------------------------------------------------------------------- planning


def plan_upload(
    run_dir: str | Path,
    epochs: Sequence[int] = (),
    best: bool = False,
    dataset_id: str | None = None,
    title: str | None = None,
    license_name: str = "CC0-1.0",
    weights_only: bool = False,
    staging: str | Path | None = None,
    sending: bool = True,
) -> UploadPlan:
    """Check an upload request without writing anything.

    Args:
        run_dir: run folder ``saved/<name>/<MMDD_HHMMSS>``.
        epochs: epochs whose ``checkpoint-epoch{N}.pth`` to send.
        best: also send ``model_best.pth``.
        dataset_id: ``user/slug``; by default the credentials' user name and a
            slug made from the run folder's name.
        title: dataset title (6-50 characters); by default from the run folder.
        license_name: a Kaggle licence name, e.g. ``CC0-1.0``.
        weights_only: send only what inference needs (see :data:`INFERENCE_KEYS`).
        staging: folder to stage in, kept afterwards; it must be empty or absent
            and outside the run folder.
        sending: also require the ``kaggle`` command and credentials (False for a dry run).

    Raises:
        SeverError: the first problem found, with what to do about it.
    """
    run = _check_run(Path(run_dir))
    checkpoints = _chosen_checkpoints(run, epochs, best)
    _check_license(license_name)
    title = title if title is not None else default_title(run)
    _check_title(title)
    if sending:
        find_kaggle()
    credentials = find_credentials() if sending or dataset_id is None else None
    if sending and credentials is None:
        raise SeverError(f"no Kaggle credentials found: {_credentials_hint()}")
    dataset_id = dataset_id if dataset_id is not None else _default_dataset_id(run, credentials)
    check_dataset_id(dataset_id)
    staging = _check_staging(Path(staging), run) if staging is not None else None
    return UploadPlan(run, checkpoints, dataset_id, title, license_name, weights_only, staging)


def _check_run(root: Path) -> RunPaths:
    if not root.is_dir():
        raise SeverError(f"run folder not found: {root}")
    run = RunPaths(root)
    if not run.config.is_file():
        raise SeverError(f"{root}: not a sever run folder (no config.yaml); expected saved/<name>/<MMDD_HHMMSS>")
    return run


def _chosen_checkpoints(run: RunPaths, epochs: Sequence[int], best: bool) -> tuple[Path, ...]:
    saved = run.saved_epochs()
    listing = ", ".join(map(str, saved)) or "none"
    if not epochs and not best:
        raise SeverError(f"choose checkpoints with -e EPOCH (saved epochs: {listing}) and/or --best")
    missing = sorted(set(epochs) - set(saved))
    if missing:
        raise SeverError(
            f"epoch {', '.join(map(str, missing))} not saved in {run.checkpoints}; saved epochs: {listing}"
        )
    chosen = [run.epoch_checkpoint(epoch) for epoch in sorted(set(epochs))]
    if best:
        if not run.best.is_file():
            raise SeverError(f"--best: no {run.best.name} in {run.checkpoints} (was trainer.monitor off?)")
        chosen.append(run.best)
    return tuple(chosen)


def _check_license(name: str) -> None:
    if name not in KAGGLE_LICENSES:
        raise SeverError(f"--license {name!r} is not a Kaggle dataset licence; choose one of: "
                         f"{', '.join(KAGGLE_LICENSES)}")


def _check_title(title: str) -> None:
    if not MIN_NAME <= len(title) <= MAX_NAME:
        raise SeverError(f"--title {title!r} has {len(title)} characters; Kaggle needs {MIN_NAME} to {MAX_NAME}")


def check_dataset_id(dataset_id: str) -> None:
    """Raise SeverError unless ``dataset_id`` is ``user/slug`` as Kaggle accepts it."""
    owner, _, slug = dataset_id.partition("/")
    if not (OWNER_PATTERN.fullmatch(owner) and SLUG_PATTERN.fullmatch(slug)
            and MIN_NAME <= len(slug) <= MAX_NAME):
        raise SeverError(
            f"dataset id {dataset_id!r} is not USER/SLUG: USER is a Kaggle user name, SLUG has {MIN_NAME} to "
            f"{MAX_NAME} lowercase letters, digits and '-' (e.g. --dataset-id jane/sever-unet-b5-1026-140000)"
        )


def _run_name_and_stamp(run: RunPaths) -> tuple[str, str]:
    """``("sever-<name>", "<MMDD_HHMMSS>")`` from ``saved/<name>/<MMDD_HHMMSS>``."""
    root = run.root.resolve()
    name = root.parent.name
    return (name if name.lower().startswith("sever") else f"sever-{name}"), root.name


def default_slug(run: RunPaths) -> str:
    """``sever-<name>-<stamp>`` as a valid Kaggle slug, cut to 50 characters (the stamp kept)."""
    name, stamp = (_slugify(part) for part in _run_name_and_stamp(run))
    return f"{name[: MAX_NAME - len(stamp) - 1].strip('-')}-{stamp}"


def default_title(run: RunPaths) -> str:
    """``sever-<name> <stamp>``, cut to 50 characters (the stamp kept)."""
    name, stamp = _run_name_and_stamp(run)
    return f"{name[: MAX_NAME - len(stamp) - 1]} {stamp}"


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _check_staging(folder: Path, run: RunPaths) -> Path:
    if folder.resolve().is_relative_to(run.root.resolve()):
        raise SeverError(f"--staging {folder}: inside the run folder {run.root}, which is never written to")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SeverError(f"--staging {folder}: must be an empty folder (or not exist yet)")
    return folder


def _default_dataset_id(run: RunPaths, credentials: KaggleCredentials | None) -> str:
    if credentials is None:
        raise SeverError(f"no Kaggle user name for the dataset id: give --dataset-id USER/SLUG, or "
                         f"{_credentials_hint()}")
    if credentials.username is None:
        raise SeverError(f"the Kaggle credentials ({credentials.source}) do not name the user: "
                         f"give --dataset-id USER/SLUG")
    return f"{credentials.username}/{default_slug(run)}"


# ---------------------------------------------------------------------------- kaggle setup


def find_kaggle() -> str:
    """Path of the ``kaggle`` command on PATH."""
    path = shutil.which("kaggle")
    if path is None:
        raise SeverError(f"the kaggle command is not installed (not found on PATH): {INSTALL_HINT}")
    return path


def kaggle_config_dir() -> Path:
    """Where the kaggle package reads ``kaggle.json``: ``$KAGGLE_CONFIG_DIR``, ``~/.kaggle`` if it
    exists, else ``$XDG_CONFIG_HOME/kaggle`` (``~/.config/kaggle``)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    legacy = Path.home() / ".kaggle"
    if legacy.exists():
        return legacy
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def find_credentials() -> KaggleCredentials | None:
    """The credentials the ``kaggle`` command would use, or None.

    In its order: ``KAGGLE_USERNAME``/``KAGGLE_KEY`` over ``kaggle.json`` (key by
    key), then an access token (``KAGGLE_API_TOKEN`` or ``~/.kaggle/access_token``),
    then the ``kaggle auth login`` file ``~/.kaggle/credentials.json``.
    """
    config_file = kaggle_config_dir() / "kaggle.json"
    stored = _read_json(config_file)
    username = os.environ.get("KAGGLE_USERNAME") or stored.get("username")
    key = os.environ.get("KAGGLE_KEY") or stored.get("key")
    if username and key:
        from_env = "KAGGLE_USERNAME" in os.environ and "KAGGLE_KEY" in os.environ
        return KaggleCredentials(username, "KAGGLE_USERNAME/KAGGLE_KEY" if from_env else str(config_file))
    home = Path.home() / ".kaggle"
    if os.environ.get("KAGGLE_API_TOKEN") or any((home / name).is_file()
                                                  for name in ("access_token", "access_token.txt")):
        return KaggleCredentials(username, "an access token")
    login = _read_json(home / "credentials.json")
    if login.get("refresh_token"):
        return KaggleCredentials(login.get("username") or username, str(home / "credentials.json"))
    return None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SeverError(f"{path}: unreadable Kaggle credentials: {exc}") from exc
    if not isinstance(data, dict):
        raise SeverError(f"{path}: Kaggle credentials must be a JSON object")
    return data


def _credentials_hint() -> str:
    return (f"set KAGGLE_USERNAME and KAGGLE_KEY, or save the API token (kaggle.json, from "
            f"https://www.kaggle.com/settings) in {kaggle_config_dir()}")


# ---------------------------------------------------------------------------- staging


@contextlib.contextmanager
def staging_folder(plan: UploadPlan, keep: bool) -> Iterator[Path]:
    """The empty folder to stage in.

    ``plan.staging`` is created if absent and always kept; without it a
    temporary folder is made and removed afterwards unless ``keep`` and the
    body succeeded.
    """
    if plan.staging is not None:
        plan.staging.mkdir(parents=True, exist_ok=True)
        yield plan.staging
        return
    folder = Path(tempfile.mkdtemp(prefix="sever-upload-"))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)


def stage(plan: UploadPlan, folder: Path) -> Staged:
    """Copy the config and checkpoints into ``folder`` and write ``dataset-metadata.json``.

    Every checkpoint is read with ``load_checkpoint`` (so an unloadable or
    untrusted file is refused before anything is sent). With
    ``plan.weights_only`` a new, smaller checkpoint is written instead of a copy.
    """
    from sever.utils.checkpoint import atomic_torch_save, load_checkpoint  # torch off the CLI's start-up path

    _check_free_space(plan, folder)
    files = [_copy(plan.run.config, folder)]
    for source in plan.checkpoints:
        state = load_checkpoint(source)
        if plan.weights_only:
            atomic_torch_save(inference_state(state), folder / source.name)
            files.append(StagedFile(source.name, source.stat().st_size, (folder / source.name).stat().st_size))
        else:
            files.append(_copy(source, folder))
        del state
        logger.info("staged %s", source)
    metadata = folder / METADATA_FILE
    metadata.write_text(json.dumps(dataset_metadata(plan), indent=2) + "\n", encoding="utf-8")
    files.append(StagedFile(METADATA_FILE, None, metadata.stat().st_size))
    return Staged(plan, folder, tuple(files))


def inference_state(state: dict) -> dict:
    """The keys of a checkpoint that inference needs; drops optimiser, scheduler, scaler and RNG state."""
    return {key: state[key] for key in INFERENCE_KEYS if key in state}


def dataset_metadata(plan: UploadPlan) -> dict:
    """The ``dataset-metadata.json`` contents Kaggle reads on create and version."""
    names = ", ".join(path.name for path in plan.checkpoints)
    kind = "weights only" if plan.weights_only else "full checkpoints, resumable"
    return {
        "title": plan.title,
        "id": plan.dataset_id,
        "licenses": [{"name": plan.license_name}],
        "description": (f"Checkpoints of the sever run `{plan.run.root.resolve().parent.name}/"
                        f"{plan.run.root.name}` ({kind}): {names}, with the run's config.yaml. "
                        f"Load with `sever.utils.checkpoint.load_checkpoint` (sever {__version__})."),
    }


def _copy(source: Path, folder: Path) -> StagedFile:
    target = folder / source.name
    shutil.copyfile(source, target)  # a new file: nothing shared with the run folder
    return StagedFile(source.name, source.stat().st_size, target.stat().st_size)


def _check_free_space(plan: UploadPlan, folder: Path) -> None:
    needed = plan.run.config.stat().st_size + sum(path.stat().st_size for path in plan.checkpoints)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SeverError(f"only {format_size(free)} free in {folder}, staging needs up to {format_size(needed)}; "
                         f"choose another folder with --staging")


def format_size(n_bytes: int) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units)."""
    exponent = 0
    while exponent < len(SIZE_UNITS) - 1 and n_bytes >= 1024 ** (exponent + 1):
        exponent += 1
    if exponent == 0:
        return f"{n_bytes} B"
    return f"{n_bytes / 1024 ** exponent:.1f} {SIZE_UNITS[exponent]}"


def describe(staged: Staged) -> str:
    """A table of the staged files with their sizes, before and after ``--weights-only``."""
    plan = staged.plan
    lines = [f"dataset {plan.dataset_id} \"{plan.title}\" ({plan.license_name}), staged in {staged.folder}:"]
    width = max(len(item.name) for item in staged.files)
    for item in staged.files:
        size = format_size(item.staged_bytes)
        if item.source_bytes is not None and item.source_bytes != item.staged_bytes:
            size = f"{size}  (was {format_size(item.source_bytes)})"
        lines.append(f"  {item.name:<{width}}  {size}")
    total = sum(item.staged_bytes for item in staged.files)
    source_total = sum(item.source_bytes or item.staged_bytes for item in staged.files)
    summary = f"total {format_size(total)}"
    if total != source_total:
        summary += f" (full checkpoints: {format_size(source_total)})"
    lines.append(f"  {summary}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- publishing


def default_message(plan: UploadPlan) -> str:
    """Version notes naming the checkpoints sent."""
    kind = " (weights only)" if plan.weights_only else ""
    return f"sever upload of {plan.run.root.name}: {', '.join(path.name for path in plan.checkpoints)}{kind}"


def kaggle_commands(staged: Staged, message: str) -> dict[str, list[str]]:
    """The argument lists (after ``kaggle``) for a new dataset and for a new version."""
    folder = str(staged.folder)
    return {"create": ["datasets", "create", "-p", folder],
            "version": ["datasets", "version", "-p", folder, "-m", message]}


def remote_action(dataset_id: str) -> str:
    """``"version"`` when ``kaggle datasets status`` finds the dataset, ``"create"`` when Kaggle says 404.

    Raises:
        SeverError: ``kaggle`` failed otherwise (credentials refused, no network, ...).
    """
    args = [find_kaggle(), "datasets", "status", dataset_id]
    result = _run(args)
    if result.returncode == 0:
        return "version"
    if re.search(r"404|not found", result.stderr + result.stdout, re.IGNORECASE):
        return "create"
    raise SeverError(_failure(args, result))


def publish(staged: Staged, action: str, message: str) -> Published:
    """Send the staging folder with ``kaggle datasets create`` or ``kaggle datasets version``.

    Raises:
        SeverError: ``kaggle`` failed; the message carries what it printed.
    """
    args = [find_kaggle(), *kaggle_commands(staged, message)[action]]
    logger.info("sending %s with kaggle datasets %s", staged.folder, action)
    result = _run(args)
    # kaggle reports a refused create/version on stdout and still exits 0
    if result.returncode != 0 or re.search(r"creation error", result.stdout, re.IGNORECASE):
        raise SeverError(_failure(args, result))
    return Published(action, result.stdout.strip())


def _run(args: list[str]) -> subprocess.CompletedProcess:
    logger.debug("running %s", args)
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SeverError(f"cannot run {args[0]}: {exc}; reinstall it: {INSTALL_HINT}") from exc


def _failure(args: list[str], result: subprocess.CompletedProcess) -> str:
    said = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
    return f"kaggle {' '.join(args[1:3])} failed (exit {result.returncode}): " + "\n".join(said[-15:])
