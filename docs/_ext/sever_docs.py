"""Sphinx directives that generate sever's reference pages from the code at build time.

- ``.. sever-config:: top`` (or ``trainer``): a table of the config keys of
  :data:`sever.utils.config.TOP_SCHEMA` / ``TRAINER_SCHEMA`` -- type, default, allowed values
  and checks read from the schema, the meaning from :data:`MEANINGS` below. A schema key
  without a meaning, or a meaning for a key the schema no longer has, is a build warning
  (an error under ``-W``), so the table cannot fall behind the schema.
- ``.. sever-loader-args::``: the ``data_loader.args`` of ``SteelDataLoader``, read from its
  constructor's signature (the defaults) and its docstring's ``Args:`` (the meanings); sever
  checks a config's args against that same signature.
- ``.. sever-commands::``: the usage line of every ``sever`` command, then each command's
  ``--help`` text, from the click group itself.
- ``.. sever-modules::``: an ``automodule`` of every module of the ``sever`` package; a name a
  module re-exports through ``__all__`` (``sever.load``, ``sever.SeverError``) is a link to the
  module that defines it, so each object has one target.
- ``.. sever-guides::``: a toctree of the guides in the order its content lists, skipping those
  not written yet and ending with any guide the list does not name (a plain toctree warns about a
  missing entry, and a glob matching nothing warns in a way ``suppress_warnings`` cannot silence).
"""

from __future__ import annotations

import inspect
import pkgutil
import re
from typing import Any

import click
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

# What each config key means (the schema holds its type, default and checks).
MEANINGS: dict[str, dict[str, str]] = {
    "top": {
        "name": "run name; runs go to ``save_dir/name/MMDD_HHMMSS``",
        "save_dir": "where runs are written",
        "seed": "seeds Python, NumPy, torch, the split and sampling",
        "device": "``auto`` (CUDA when available), ``cpu``, ``cuda:N``",
        "amp": "mixed precision: ``off``, ``bf16``, ``fp16`` (CUDA)",
        "task": "``segmentation``, ``classification`` (defect presence per class) or ``detection``",
        "classes": "number of defect classes (CSV ClassIds ``1`` .. ``classes``)",
        "class_names": "names for reports, one per class",
        "arch": "model block (:ref:`config-arch`)",
        "data_loader": "data block (:ref:`config-data-loader`)",
        "augmentation": "``LightTransforms``, ``MediumTransforms``, ``HeavyCropTransforms`` (args: ``height``, "
                        "``width``, ``mean``, ``std``, ``pad_mode`` ``constant``/``reflect``, ``pad_value`` "
                        "0-255: how images smaller than the crop are padded); ``DetectionTransforms`` for detection",
        "loss": "``BCELoss``, ``DiceLoss``, ``BCEDiceLoss`` (``bce_weight``, ``dice_weight``), ``IoULoss``, "
                "``LovaszLoss``, ``FocalLoss``, ``TverskyLoss``, ``FocalTverskyLoss``, ``WeightedSumLoss``; "
                "``DetectionLoss`` for detection",
        "metrics": "validation metrics: ``Dice``, ``IoU`` (args ``threshold``, ``min_pixels``), ``DefectDice``, "
                   "``Presence`` (:doc:`/guides/plan-auto`); ``Accuracy``, ``PrecisionRecall`` for classifiers; "
                   "``MeanAP`` for detection. Default: the task's (``[Dice]`` for segmentation)",
        "optimizer": "``type`` (``Adam``, ``AdamW``, ``SGD``, ``RAdam``, ``Ranger``), shared ``args``, and "
                     "per-group ``encoder`` / ``decoder`` args (``lr``, ``weight_decay``, ...)",
        "lr_scheduler": "``FlatCosineAnnealing`` (``start_anneal``, ``n_epochs``, ``eta_min``, ``warmup_epochs``, "
                        "``per_step``), ``WarmupCosine``, ``ReduceLROnPlateau``, or any "
                        "``torch.optim.lr_scheduler`` class; stepped per epoch (sever's two also within it "
                        "with ``per_step: true``)",
        "trainer": "training loop options (:ref:`config-trainer`)",
        "pseudo": "``{images: DIR, rounds: R, ...}``: pseudo-label rounds of a study on unlabelled images "
                  "(:doc:`/guides/studies`; ``sever auto --unlabelled`` writes ``rounds: 1``)",
        "final_model": "a study's: after its folds, one run on every labelled image for a fold's share of the "
                       "budget, which ``sever predict -m STUDY`` predicts with (:doc:`/guides/studies`)",
    },
    "trainer": {
        "epochs": "last epoch (an upper bound with ``time_budget``)",
        "save_period": "``checkpoint-epoch{N}.pth`` every N epochs",
        "monitor": "``min|max METRIC`` for the best model, or ``off``",
        "early_stop": "stop after this many validations without gain",
        "val_period": "validate every N epochs ...",
        "start_val_epoch": "... and every epoch from this one on",
        "freeze_encoder_epochs": "train only the decoder for the first N epochs",
        "accumulate_steps": "gradient accumulation",
        "grad_clip": "clip the gradient norm to this value",
        "ema_decay": "validate and keep an exponential moving average of the weights",
        "nan_policy": "on a non-finite loss: ``stop`` the run or ``skip`` the step",
        "tensorboard": "write TensorBoard events",
        "log_step": "steps between per-step TensorBoard points (losses and learning rates)",
        "vis_images": "validation images shown with their masks in TensorBoard",
        "max_steps_per_epoch": "cap batches per epoch (quick experiments)",
        "channels_last": "NHWC memory layout (faster convolutions on GPUs)",
        "compile": "``torch.compile`` the network",
        "cudnn_benchmark": "let cuDNN pick the fastest kernels (CUDA)",
        "report_images": "validation images the end-of-training report predicts (on the CPU); 0: no report",
        "time_budget": "stop training within this time, e.g. ``2h30m``, ``45m``, ``90s``; the LR schedule ends "
                       "with it (:ref:`time-budget`)",
        "tune_postprocess": "tune the post-processing on the validation split at the end of training "
                            "(``postprocess.yml``, :ref:`self-tuning`)",
        "valid_tile": "``HxW``: validate images larger than this in tiles (:ref:`tiled-inference`)",
        "valid_overlap": "with ``valid_tile``: overlap of the tiles, [0, 1)",
    },
}


def _schemas() -> dict[str, dict]:
    from sever.utils.config import TOP_SCHEMA, TRAINER_SCHEMA

    return {"top": TOP_SCHEMA, "trainer": TRAINER_SCHEMA}


def _literal(value: Any) -> str:
    if value is None:
        return "none"
    return f"``{value}``"


def _type_text(field) -> str:
    names = {int: "int", float: "number", str: "string", bool: "bool", list: "list", dict: "mapping"}
    text = " or ".join(names.get(t, t.__name__) for t in field.types)
    return text + (" or null" if field.nullable else "")


def _allowed_text(field) -> str:
    parts = []
    if field.choices is not None:
        parts.append(", ".join(_literal(choice) for choice in field.choices))
    if field.check is not None:
        parts.append(field.check[1])
    return "; ".join(parts)


def _list_table(header: list[str], rows: list[list[str]], widths: str) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header] + rows:
        lines.append(f"   * - {row[0] or ' '}")
        lines.extend(f"     - {cell or ' '}" for cell in row[1:])
    return lines


class _Generated(SphinxDirective):
    """A directive whose body is RST text generated from the code."""

    def rst_lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.section() if self.allow_titles else nodes.container()
        source = f"<generated by {self.name}>"
        content = StringList(self.rst_lines(), source=source)
        nested_parse_with_titles(self.state, content, container)
        return container.children

    allow_titles = False


class ConfigTable(_Generated):
    """``.. sever-config:: top|trainer``: the keys of that schema as a table."""

    required_arguments = 1

    def rst_lines(self) -> list[str]:
        section = self.arguments[0]
        schema, meanings = _schemas()[section], MEANINGS[section]
        for key in schema.keys() - meanings.keys():
            logger.warning("sever-config %s: the schema key %r has no meaning in docs/_ext/sever_docs.py",
                           section, key, location=self.get_location())
        for key in meanings.keys() - schema.keys():
            logger.warning("sever-config %s: %r has a meaning but is not a key of the schema",
                           section, key, location=self.get_location())
        rows = []
        for key, field in schema.items():
            default = "(required)" if field.required else _literal(field.default)
            rows.append([f"``{key}``", _type_text(field), default, _allowed_text(field), meanings.get(key, "")])
        return _list_table(["key", "type", "default", "allowed", "meaning"], rows, "18 12 14 16 40")


def _docstring_args(obj) -> dict[str, str]:
    """The ``Args:`` entries of a Google-style docstring: name -> text (``a, b: text`` gives both)."""
    doc = inspect.getdoc(obj) or ""
    block = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    entries: dict[str, str] = {}
    current: list[str] = []
    for line in block.splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        match = re.match(r"    ([\w, ]+):\s*(.*)", line)
        if match:
            current = [match.group(2)]
            for name in match.group(1).split(","):
                entries[name.strip()] = current
        elif line.strip():
            current.append(line.strip())
    return {name: " ".join(text) for name, text in entries.items()}


class LoaderArgs(_Generated):
    """``.. sever-loader-args::``: ``SteelDataLoader``'s user arguments, defaults and meanings."""

    def rst_lines(self) -> list[str]:
        from sever.data_loader.data_loaders import SteelDataLoader

        meanings = _docstring_args(SteelDataLoader)
        rows = []
        for name, param in inspect.signature(SteelDataLoader.__init__).parameters.items():
            if name == "self" or param.kind is not param.POSITIONAL_OR_KEYWORD:
                continue  # keyword-only arguments are supplied by sever, not the config
            if name not in meanings:
                logger.warning("sever-loader-args: SteelDataLoader's %r has no entry in its docstring's Args",
                               name, location=self.get_location())
            default = "(required)" if param.default is param.empty else _literal(param.default)
            rows.append([f"``{name}``", default, meanings.get(name, "")])
        return _list_table(["arg", "default", "meaning"], rows, "20 16 64")


class Commands(_Generated):
    """``.. sever-commands::``: every command's usage line, then its full ``--help``."""

    allow_titles = True

    def rst_lines(self) -> list[str]:
        from sever.cli.app import cli

        root = click.Context(cli, info_name="sever")
        lines = ["::", "", "    " + cli.get_usage(root).replace("Usage: ", "")]
        commands = {name: cli.get_command(root, name) for name in cli.list_commands(root)}
        lines += [f"    {command.get_usage(click.Context(command, info_name=name, parent=root))}".replace("Usage: ", "")
                  for name, command in commands.items()]
        lines.append("")
        for name, command in commands.items():
            help_text = command.get_help(click.Context(command, info_name=name, parent=root))
            lines += [f"``sever {name}``", "-" * (len(name) + 10), "", "::", ""]
            lines += [f"    {line}" if line else "" for line in help_text.splitlines()]
            lines.append("")
        return lines


class Modules(_Generated):
    """``.. sever-modules::``: an ``automodule`` section for every module of sever."""

    allow_titles = True

    def rst_lines(self) -> list[str]:
        import sever

        names = ["sever"] + sorted(info.name for info in pkgutil.walk_packages(sever.__path__, "sever."))
        lines = []
        for name in names:
            if name == "sever.__main__":
                continue  # running it starts the command line
            lines += [f"``{name}``", "-" * (len(name) + 4), "", f".. automodule:: {name}"]
            elsewhere = _reexports(name)
            if elsewhere:
                lines.append(f"   :exclude-members: {', '.join(elsewhere)}")
                lines += ["", "Also importable from here (documented where defined):", ""]
                lines += [f"- :py:obj:`{name}.{short} <{home}>`{_summary(home)}" for short, home in elsewhere.items()]
            lines.append("")
        return lines


def _reexports(module_name: str) -> dict[str, str]:
    """The classes and functions a module's ``__all__`` names but another module defines.

    autodoc documents every name of ``__all__``, so a re-export (``sever.SeverError``,
    ``sever.planning.plan.PlanError``) would be a second target of the same object and make
    every plain reference to it ambiguous. They are listed as links to their home instead.
    Returns {name in the module: dotted path where it is defined}.
    """
    import importlib

    module = importlib.import_module(module_name)
    found = {}
    for short in getattr(module, "__all__", ()):
        value = getattr(module, short)  # sever's lazy names import their module here
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue  # constants carry no home module; autodoc documents them where listed
        if value.__module__ != module_name:
            found[short] = f"{value.__module__}.{value.__qualname__}"
    return found


def _summary(dotted: str) -> str:
    """': ' and the first line of the docstring of the object at ``dotted``, or ''."""
    import importlib

    module_name, _, attribute = dotted.rpartition(".")
    doc = inspect.getdoc(getattr(importlib.import_module(module_name), attribute)) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return f": {first}" if first else ""


class Guides(_Generated):
    """``.. sever-guides::`` with one guide name a line (relative to the ``guides/`` folder)."""

    has_content = True
    option_spec = {"caption": lambda text: text}

    def rst_lines(self) -> list[str]:
        found = sorted(name.removeprefix("guides/") for name in self.env.found_docs if name.startswith("guides/"))
        ordered = [name for name in self.content if name.strip() and name in found]
        ordered += [name for name in found if name not in ordered]
        lines = [".. toctree::", "   :maxdepth: 2"]
        if "caption" in self.options:
            lines.append(f"   :caption: {self.options['caption']}")
        return lines + [""] + [f"   guides/{name}" for name in ordered]


def setup(app) -> dict:
    app.add_directive("sever-config", ConfigTable)
    app.add_directive("sever-loader-args", LoaderArgs)
    app.add_directive("sever-commands", Commands)
    app.add_directive("sever-modules", Modules)
    app.add_directive("sever-guides", Guides)
    return {"parallel_read_safe": True, "version": "1"}
