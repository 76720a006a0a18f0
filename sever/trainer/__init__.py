"""Trainers: the epoch loop (:mod:`~sever.trainer.base`) and the task-specific halves (:mod:`~sever.trainer.trainer`).

Trainers are registered in :data:`sever.registries.TRAINERS`; a task names its trainer (:mod:`sever.tasks`).
"""
