"""Every registry of sever, with the modules that fill it.

A registry imports its ``locations`` on its first lookup, so implementation
modules register themselves with ``@LOSSES.register`` and nobody imports them
for that side effect. A part in a **new** module is registered by adding that
module to its registry's ``locations`` below: one line, no ``__init__`` edits.

This module imports nothing of sever but the :class:`Registry` class, so any
layer may import it (see ``DEVELOPERS.md``, "Layers").
"""

from sever.utils.registry import Registry

ARCHITECTURES = Registry("architecture", locations=["sever.model.model", "sever.model.detection"])
LOSSES = Registry("loss", locations=["sever.model.loss", "sever.model.detection"])
METRICS = Registry("metric", locations=["sever.model.metric", "sever.detection.metric"])
OPTIMIZERS = Registry("optimizer", locations=["sever.model.optimizer"])
SCHEDULERS = Registry("lr scheduler", locations=["sever.model.scheduler"])
TRANSFORMS = Registry("augmentation", locations=["sever.data_loader.augmentation", "sever.detection.data"])
SAMPLERS = Registry("sampler", locations=["sever.data_loader.sampling"])
DATA_LOADERS = Registry("data loader", locations=["sever.data_loader.data_loaders", "sever.detection.data"])
DATA_SOURCES = Registry("data source", locations=["sever.data_loader.sources"])
TRAINERS = Registry("trainer", locations=["sever.trainer.trainer", "sever.detection.trainer"])
TASKS = Registry("task", locations=["sever.tasks"])
