"""Composed pipelines: models whose classes differ, combined into one prediction.

A run trained with ``data_loader.args.train_classes`` predicts some of its dataset's
classes, or one any-defect output (:class:`~sever.utils.config.OutputClasses`, read
from the checkpoint's config). The segmentation runs given to ``sever predict``,
``evaluate`` and ``tune`` (``-m``) make one prediction:

- runs that all predict the same classes are an ensemble, as before: the prediction
  has their classes;
- runs whose classes differ are *composed*: the prediction has every class of the
  dataset, each class the ensemble (``--average``, ``-w``) of the runs that predict
  it. Every class must be predicted by some run, and every run must be of the same
  dataset (class count, class names). One binary run per class composes into a
  full prediction; a full run beside a binary run of one class ensembles that class.
- an any-defect segmentation run (``train_classes: any``) predicts no class of the
  dataset, so it is refused in a composition; alone (or with other any-defect runs)
  it predicts its union mask, which ``evaluate``/``tune --split val`` score against
  the union of the true masks.

Classifiers (``--classifier``) gate the prediction's classes the same way. Each
class's classifier probability is the mean of the classifiers that predict that
class; an any-defect classifier (one output) gates every class: its probability
multiplies each class's. That is the chain of the seed write-ups (an image the
any-defect classifier rejects never reaches the class models): the chance of a
defect times the chance of the class. A class no per-class classifier predicts
takes the any-defect probability alone, or 1 (ungated) without one. The product
then goes through the post-processing's gating (``c_factor``, ``veto``) unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, Sequence

from sever.exceptions import ConfigError
from sever.utils.config import OutputClasses, output_classes

logger = logging.getLogger(__name__)

Sources = tuple[tuple[int, int], ...]
"""The ``(model index, model channel)`` pairs that predict one channel of the prediction."""


class Run(Protocol):
    """What composition reads of a model: its checkpoint file and config (a LoadedModel or an OpenedCheckpoint)."""

    source: object
    config: dict


@dataclass(frozen=True)
class Composition:
    """How the channels of M segmentation models make the prediction's channels.

    Attributes:
        outputs: which dataset classes the prediction's channels are.
        providers: per prediction channel, the models (and their channel) predicting it.
        ensemble: every model predicts every channel, at that channel (runs of the same classes).
    """

    outputs: OutputClasses
    providers: tuple[Sources, ...]
    ensemble: bool


@dataclass(frozen=True)
class Gate:
    """How the probabilities of classifiers gate the prediction's channels.

    Attributes:
        providers: per prediction channel, the per-class classifiers (and their channel)
            whose mean is the channel's probability (empty: 1).
        any_defect: the any-defect classifiers, whose mean multiplies every channel's.
    """

    providers: tuple[Sources, ...]
    any_defect: tuple[int, ...]


def _outputs(runs: Sequence[Run]) -> list[OutputClasses]:
    return [output_classes(run.config) for run in runs]


def check_same_dataset(runs: Sequence[Run], outputs: Sequence[OutputClasses], reference: Run,
                       expected: OutputClasses, option: str) -> None:
    """ConfigError unless every run is of ``expected``'s dataset: its class count and (when both name them) names.

    The message names ``reference`` first for ``-m`` (the first model) and the run first otherwise.
    """
    for run, out in zip(runs, outputs):
        pair = ((reference, expected), (run, out)) if option == "-m" else ((run, out), (reference, expected))
        (a, a_out), (b, b_out) = pair
        if out.dataset != expected.dataset:
            raise ConfigError(f"{option}: {a.source} predicts {a_out.dataset} classes but {b.source} predicts "
                              f"{b_out.dataset} (config `classes`): models compose only over one dataset's classes")
        if out.names and expected.names and out.names != expected.names:
            raise ConfigError(f"{option}: {a.source} names its classes {list(a_out.names)} but {b.source} "
                              f"{list(b_out.names)}: models compose only over one dataset's classes")


def compose(models: Sequence[Run], option: str = "-m") -> Composition:
    """Plan the prediction of segmentation ``models`` (module docstring), from their configs alone.

    Raises:
        ConfigError: no model; models of different datasets; an any-defect model among
            models of other classes; a dataset class no model predicts (each named, with
            what every model predicts).
    """
    if not models:
        raise ConfigError("give at least one segmentation model")
    outputs = _outputs(models)
    first = outputs[0]
    named = next((out for out in outputs if out.names), first)
    check_same_dataset(models, outputs, models[0], first, option)
    if all(out.ids == first.ids for out in outputs):
        return Composition(OutputClasses(first.dataset, first.ids, named.names),
                           tuple(tuple((m, k) for m in range(len(models))) for k in range(first.outputs)), True)
    for model, out in zip(models, outputs):
        if out.any_defect:
            raise ConfigError(f"{option} {model.source}: an any-defect segmentation run (train_classes: any) predicts "
                              f"no class of its own, so it cannot be composed with runs of other classes; gate the "
                              f"classes with an any-defect classifier (--classifier) instead")
    complete = OutputClasses(first.dataset, tuple(range(first.dataset)), named.names)
    providers = tuple(tuple((m, out.ids.index(c)) for m, out in enumerate(outputs) if c in out.ids)
                      for c in range(first.dataset))
    missing = [complete.label(c) for c, sources in enumerate(providers) if not sources]
    if missing:
        each = "; ".join(f"{model.source} predicts {out.describe()}" for model, out in zip(models, outputs))
        raise ConfigError(f"{option}: {', '.join(missing)} of the dataset's {first.dataset} classes "
                          f"{'is' if len(missing) == 1 else 'are'} predicted by none of the composed models ({each}); "
                          f"add a run that predicts {'it' if len(missing) == 1 else 'them'}")
    return Composition(complete, providers, False)


def check_class_weights(composition: Composition, weights: Sequence[float] | None) -> None:
    """ConfigError when every model predicting some class has weight 0 (``-w``): that class would be undefined."""
    if weights is None:
        return
    for label, sources in zip(composition.outputs.labels(), composition.providers):
        if not sum(weights[m] for m, _ in sources) > 0:
            raise ConfigError(f"-w: {label} is predicted only by models of weight 0 "
                              f"(models {', '.join(str(m + 1) for m, _ in sources)} of -m)")


def require_every_class(composition: Composition, models: Sequence[Run]) -> None:
    """ConfigError unless the prediction has every class of the dataset, in order (what a submission needs)."""
    outputs = composition.outputs
    if outputs.complete:
        return
    missing = [outputs.label(c) for c in range(outputs.dataset) if outputs.ids is None or c not in outputs.ids]
    sources = ", ".join(str(model.source) for model in models)
    raise ConfigError(f"-m: a submission needs every class of the dataset, but {sources} "
                      f"predict{'s' if len(models) == 1 else ''} {outputs.describe()} only, not "
                      f"{', '.join(missing)}; compose runs that cover them (sever predict -m A -m B ...)")


def gate(classifiers: Sequence[Run], composition: Composition, reference: Run) -> Gate:
    """Plan how ``classifiers`` gate the prediction ``composition`` makes (module docstring).

    Args:
        reference: a segmentation model, named in messages about datasets.

    Raises:
        ConfigError: a classifier of another dataset; a per-class classifier beside an
            any-defect prediction; a classifier that predicts none of the prediction's classes.
    """
    outputs = composition.outputs
    found = _outputs(classifiers)
    check_same_dataset(classifiers, found, reference, outputs, "--classifier")
    any_defect = tuple(i for i, out in enumerate(found) if out.any_defect)
    channels = (None,) if outputs.ids is None else outputs.ids
    providers = tuple(tuple((i, out.ids.index(c)) for i, out in enumerate(found) if not out.any_defect and c in out.ids)
                      for c in channels)
    used = {i for sources in providers for i, _ in sources} | set(any_defect)
    for i, (classifier, out) in enumerate(zip(classifiers, found)):
        if i not in used:
            raise ConfigError(f"--classifier {classifier.source} predicts {out.describe()}, none of the predicted "
                              f"classes ({outputs.describe()}): it would gate nothing")
    if classifiers and not any_defect:
        ungated = [label for label, sources in zip(outputs.labels(), providers) if not sources]
        if ungated:
            logger.info("no classifier predicts %s: not gated (classifier probability 1)", ", ".join(ungated))
    return Gate(providers, any_defect)
