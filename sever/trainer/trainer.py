"""Supervised trainers: segmentation (masks) and classification (defect presence).

:class:`Trainer` holds the one training step (DDP gradient sync, AMP, the
finite-loss check, backward, gradient accumulation and clipping, EMA) and the one
validation pass of every task; a task supplies its forward pass and loss through
hooks (:meth:`~Trainer._to_device`, :meth:`~Trainer._forward_loss`,
:meth:`~Trainer._valid_forward`). Segmentation and classification differ only in
what they show in TensorBoard; :class:`~sever.detection.trainer.DetectionTrainer`
is the third task.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.profiler import record_function
from torch.utils.data import DataLoader

from sever.data_loader.augmentation import PAD_LABEL
from sever.trainer.base import BaseTrainer
from sever.exceptions import TrainingError
from sever.model.scheduler import step_within_epoch
from sever.registries import TRAINERS
from sever.utils import interrupt
from sever.utils.device import autocast
from sever.utils.distributed import Distributed
from sever.utils.progress import Progress
from sever.utils.time_budget import BUDGET_ENDS, spread_order
from sever.utils.visualization import overlay_masks, to_uint8_image

logger = logging.getLogger(__name__)

# The phases of a training step, each run inside a profiler range named ``sever.<phase>``
# (torch.profiler.record_function: next to free when no profiler records);
# benchmarks/gpu_check.py --profile sums a trace by them.
PHASES = ("data_wait", "to_device", "forward", "backward", "optimizer", "metrics", "sync")


def phase(name: str) -> record_function:
    """The profiler range of one of :data:`PHASES`."""
    return record_function(f"sever.{name}")


def waited_for(batches):
    """Yield from ``batches``, each wait for the next batch inside the ``data_wait`` range."""
    iterator = iter(batches)
    while True:
        with phase("data_wait"):
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


class ExponentialAverage(AveragedModel):
    """torch's AveragedModel with an exponential moving average (its state dict unchanged) whose update
    never waits for the device: torch's own reads its count and copies it to the device at every update.

    ``n_averaged`` stays on the CPU (AveragedModel's default), so reading it costs no synchronisation.
    Floating-point parameters and buffers move ``1 - decay`` of the way to the model's; integer
    buffers (batch-norm counters) take ``decay * old + (1 - decay) * new`` truncated, as torch's do.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [tensor.detach() for tensor in (*model.parameters(), *model.buffers())]
        if int(self.n_averaged.numpy()) == 0:  # numpy(): a CPU tensor's value, read without the device
            torch._foreach_copy_(averaged, current)
        else:
            floats = [(mine, theirs) for mine, theirs in zip(averaged, current) if mine.is_floating_point()]
            if floats:
                torch._foreach_lerp_([m for m, _ in floats], [t for _, t in floats], 1 - self.decay)
            for mine, theirs in zip(averaged, current):
                if not mine.is_floating_point():
                    mine.copy_(mine * self.decay + theirs * (1 - self.decay))
        self.n_averaged += 1


class Trainer(BaseTrainer):
    """One supervised training step and validation pass for any (image, target) task.

    Args:
        model, optimizer, lr_scheduler, config, run: see :class:`BaseTrainer`.
        loss: module returning a scalar or a dict with ``"loss"`` and named parts.
        metrics: accumulating metrics (``reset``/``update``/``compute``).
        train_loader: yields ``(images (B, 1, H, W), targets)``; its batch sampler
            has ``set_epoch(epoch, start_batch)``.
        valid_loader: the same for validation, or None.
        device: where to train.
        amp: ``off``, ``bf16`` or ``fp16``.
        normalization: maps the loaders' uint8 images, once on ``device``, to the
            model's input (the augmentation's :class:`~sever.data_loader.augmentation.Normalization`);
            None feeds the images as they come.
        tiling: validates images larger than its tile tile by tile (``trainer.valid_tile``: a
            :class:`~sever.inference.tiling.Tiling`, handed in by ``sever.experiment``), or None.
    """

    def __init__(self, model, loss, metrics, optimizer, lr_scheduler, config, run, train_loader,
                 valid_loader, device: torch.device, amp: str = "off", distributed: Distributed = Distributed(),
                 normalization: Callable[[torch.Tensor], torch.Tensor] | None = None, tiling=None):
        super().__init__(model, optimizer, lr_scheduler, config, run, distributed)
        self.tiling = tiling
        options = config["trainer"]
        self.normalization = normalization
        self.loss = loss
        self.metrics = metrics
        self.train_loader = train_loader
        self.valid_loader = valid_loader
        self.device = device
        self.amp = amp
        self.accumulate = options["accumulate_steps"]
        self.grad_clip = options["grad_clip"]
        self.nan_policy = options["nan_policy"]
        self.log_step = options["log_step"]
        self.vis_images = options["vis_images"]
        self.max_steps = options["max_steps_per_epoch"]
        self.memory_format = torch.channels_last if options["channels_last"] else torch.contiguous_format
        self.compile = options["compile"]
        self.scaler = torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
        decay = options["ema_decay"]
        self.ema = ExponentialAverage(model, decay) if decay is not None else None
        self.skipped_steps = 0
        self._first_non_finite: torch.Tensor | None = None  # (batch, loss) of the pass's first, on the device
        self.network = self._wrap_network()
        self._spread_loader: DataLoader | None = None  # the validation batches in spread order (with a time budget)

    def _wrap_network(self) -> torch.nn.Module:
        """The module the training step calls: the model, wrapped for DDP and compiled as configured.

        Checkpoints always come from the bare :attr:`model`.
        """
        network = self.model
        if self.dist.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            network = DistributedDataParallel(network, device_ids=device_ids)
        if self.compile:
            network = torch.compile(network)
        return network

    def _trainable_changed(self) -> None:
        if self.dist.enabled:  # DDP only reduces the gradients of parameters trainable when it was built
            self.network = self._wrap_network()

    # ------------------------------------------------------------------ training

    def _batches_per_epoch(self) -> int:
        total = len(self.train_loader)
        return min(total, self.max_steps) if self.max_steps else total

    def _train_epoch(self, epoch: int, start_step: int) -> dict[str, float]:
        self.model.train()
        self.train_loader.batch_sampler.set_epoch(epoch, start_step)
        for metric in self.metrics:
            metric.reset()
        n_batches = self._batches_per_epoch()
        sums: dict[str, torch.Tensor] = {}  # float64 on the device, read at the pass's end
        last: dict[str, float] = {}  # the loss parts of the last log step, on the host
        seen, started = 0, time.perf_counter()
        progress = Progress(n_batches, f"epoch {epoch}/{self.epochs}", "batch", initial=start_step)
        self.optimizer.zero_grad(set_to_none=True)
        for step, (images, targets) in enumerate(waited_for(self.train_loader), start=start_step):
            if step >= n_batches:
                break
            step_within_epoch(self.lr_scheduler, step / n_batches)
            parts = self._train_step(images, targets, step, n_batches, epoch)
            for key, value in parts.items():
                sums[key] = sums[key] + value if key in sums else value.double()
            seen += len(images)
            self.steps_done = step + 1
            if step % self.log_step == 0:  # the step's one read of the device: loss parts and finiteness
                last = self._read(parts, epoch)
                self._log_batch(last, (epoch - 1) * n_batches + step)
            progress.set_postfix(loss=f"{last.get('loss', math.nan):.4f}", run_eta=self.run_eta(epoch, (step + 1) / n_batches))
            progress.update(images=len(images))
            if self._at_update_boundary(step, n_batches) and self.dist.any(self.stop_requested or self._out_of_time()):
                self.interrupted = self._stop_agreed() and self.steps_done < n_batches
                if not self.interrupted and self.steps_done < n_batches:
                    logger.info("time budget: epoch %d trains %d of its %d batches", epoch, self.steps_done, n_batches)
                break
        progress.close()
        totals = self._read(sums, epoch)
        self.dist.sync_buffers_(self.model)
        elapsed = max(time.perf_counter() - started, 1e-9)
        log = self._epoch_means(totals, self.steps_done - start_step, "train")
        log["train_images_per_s"] = self._reduced([float(seen)])[0] / elapsed
        return log

    def _log_batch(self, parts: dict[str, float], global_step: int) -> None:
        """Write one log step's loss parts and learning rates to TensorBoard (per step: warm-up and
        per-batch schedules)."""
        if self.writer is None:
            return
        for key, value in parts.items():
            self.writer.add_scalar(f"batch/{key}", value, global_step)
        for name, lr in self._learning_rates().items():
            self.writer.add_scalar(f"batch/lr_{name}", lr, global_step)

    def _read(self, values: dict[str, torch.Tensor], epoch: int) -> dict[str, float]:
        """``values`` (0-dim tensors on the device) as floats, read in one synchronisation.

        The same read takes the pass's first non-finite loss noted by :meth:`_note_finite`, if any,
        and stops training on it (``nan_policy: stop``): the check costs no synchronisation of its own.
        """
        keys = list(values)
        record = self._first_non_finite
        tensors = [values[key].double() for key in keys] + ([record] if record is not None else [])
        if not tensors:
            return {}
        with phase("sync"):
            read = torch.cat([tensor.reshape(-1) for tensor in tensors]).tolist()
        if record is not None:
            self._first_non_finite = None
            batch, loss = read[-2:]
            if batch >= 0:
                raise self._non_finite_error(loss, epoch, int(batch))
        return dict(zip(keys, read))

    def _reduced(self, values: list[float]) -> list[float]:
        """``values`` summed over every rank."""
        if not self.dist.enabled:
            return values
        return self.dist.all_reduce_(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def _epoch_means(self, sums: dict[str, float], batches: int, prefix: str) -> dict[str, float]:
        """Mean losses per batch and the metrics, over every rank."""
        keys = sorted(sums)
        *totals, count = self._reduced([sums[k] for k in keys] + [float(batches)])
        log = {f"{prefix}_{key}": total / max(count, 1.0) for key, total in zip(keys, totals)}
        for metric in self.metrics:
            if not metric.empty:
                if self.dist.enabled:
                    metric.reduce_(self.dist.all_reduce_)
                log.update({f"{prefix}_{k}": v for k, v in metric.compute().items()})
        return log

    def _at_update_boundary(self, step: int, n_batches: int) -> bool:
        return (step + 1) % self.accumulate == 0 or step + 1 == n_batches

    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        """A loader's batch of images on the device, normalised, in the trainer's memory format."""
        images = images.to(self.device, non_blocking=True)
        if self.normalization is not None:
            images = self.normalization(images)
        return images.contiguous(memory_format=self.memory_format)

    def _to_device(self, images, targets):
        """Hook: a loader's batch on the device, as :meth:`_forward_loss` and the metrics take it.

        Here images become the model's input (:meth:`_model_input`) and targets move as they are.
        """
        return self._model_input(images), targets.to(self.device, non_blocking=True)

    def _forward_loss(self, images, targets) -> tuple[dict[str, torch.Tensor], Any]:
        """Hook: the task's forward pass and loss on one training batch, run under autocast.

        Args:
            images, targets: the batch as :meth:`_to_device` returns it.

        Returns:
            ``(parts, outputs)``: the loss parts (``"loss"`` is the scalar total the
            backward pass uses) and what the metrics update with beside ``targets``
            (here the logits), or None to update no metric while training.
        """
        logits = self.network(images)
        return self._loss_parts(logits, targets), logits

    def _train_step(self, images, targets, step: int, n_batches: int, epoch: int) -> dict[str, torch.Tensor]:
        """Train on one batch; return its loss parts, detached 0-dim tensors on the device. The same for every task.

        The task's :meth:`_forward_loss` runs under autocast; the loss, divided by
        ``accumulate_steps`` so accumulated gradients average the batches, goes
        backward through the AMP scaler; at an update boundary the optimiser steps
        (:meth:`_optimizer_step`). Under DDP gradients are all-reduced only at an
        update boundary.

        The step never waits for the device (no ``.item()``, no ``bool`` of a device tensor),
        so the host queues the next batch's work while the device runs this one. A non-finite
        loss is noted on the device (:meth:`_note_finite`) and stops training at the next read
        (:meth:`_read`: the next log step or the pass's end), before any checkpoint; under
        ``nan_policy: skip`` the host must decide before the backward pass, which costs one
        synchronisation per step.
        """
        with phase("to_device"):
            images, targets = self._to_device(images, targets)
        update = self._at_update_boundary(step, n_batches)
        sync = self.network.no_sync() if self.dist.enabled and not update else contextlib.nullcontext()
        with sync:
            with phase("forward"), autocast(self.amp, self.device):
                parts, outputs = self._forward_loss(images, targets)
            total = parts["loss"]
            if self.nan_policy == "skip" and not torch.isfinite(total):
                return self._skip_non_finite(total, step, epoch)
            self._note_finite(total, step)
            with phase("backward"):
                self.scaler.scale(total / self.accumulate).backward()
        if update:
            with phase("optimizer"):
                self._optimizer_step()
        if outputs is not None:
            with phase("metrics"), torch.no_grad():
                self._update_metrics(outputs.detach(), targets)
        return {key: value.detach() for key, value in parts.items()}

    def _note_finite(self, total: torch.Tensor, step: int) -> None:
        """Keep ``(step, loss)`` of the pass's first non-finite ``total`` in a device tensor (float64 ``(2,)``);
        ``(-1, -1)`` while all are finite. Three small kernels, no read."""
        record = self._first_non_finite
        if record is None:
            record = torch.full((2,), -1.0, dtype=torch.float64, device=self.device)
        loss = total.detach().double()
        first = ~torch.isfinite(loss) & (record[0] < 0)
        self._first_non_finite = torch.where(first, torch.stack([loss.new_full((), step), loss]), record)

    def _update_metrics(self, outputs, targets) -> None:
        """Hook: add one batch's ``outputs`` and ``targets`` (as :meth:`_to_device` gives them) to the metrics."""
        for metric in self.metrics:
            metric.update(outputs, targets)

    def _loss_parts(self, logits: torch.Tensor, *targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of ``logits`` against ``targets`` (the target, then e.g. the valid-pixel mask) as parts."""
        out = self.loss(logits, *targets)
        return dict(out) if isinstance(out, dict) else {"loss": out}

    def _optimizer_step(self) -> None:
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _skip_non_finite(self, total: torch.Tensor, step: int, epoch: int) -> dict[str, torch.Tensor]:
        """``nan_policy: skip``: drop the step and the gradients accumulated so far."""
        self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        logger.warning("non-finite loss (%s) at epoch %d batch %d: step skipped (%d so far)",
                       float(total.detach()), epoch, step, self.skipped_steps)
        return {"loss": torch.zeros((), device=self.device)}

    def _non_finite_error(self, loss: float, epoch: int, step: int) -> TrainingError:
        last = self.run.last if self.run.last.exists() else None
        return TrainingError(
            f"non-finite loss ({loss}) at epoch {epoch} batch {step}; training stopped and no "
            f"checkpoint was written over the good ones"
            + (f" (last good: {last})" if last else "")
            + ". Lower the learning rate, check the data, or set trainer.nan_policy: skip."
        )

    # ------------------------------------------------------------------ validation

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation scores: the EMA average when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def _begin_validation(self) -> torch.nn.Module:
        """:attr:`eval_model` in eval mode, with every metric reset."""
        model = self.eval_model
        model.eval()
        for metric in self.metrics:
            metric.reset()
        return model

    def _valid_forward(self, model: torch.nn.Module, images, targets) -> tuple[dict[str, torch.Tensor], Any]:
        """Hook: ``model`` (:attr:`eval_model`) on one validation batch, run under autocast.

        Returns ``(parts, outputs)`` as :meth:`_forward_loss` does (empty parts when
        the task has no validation loss); ``outputs`` update the metrics and the visuals.
        """
        logits = model(images)
        return self._loss_parts(logits, targets), logits

    def _valid_log(self, sums: dict[str, float], batches: int) -> dict[str, float]:
        """Hook: the validation log from the summed loss parts of ``batches`` batches and the metrics."""
        return self._epoch_means(sums, batches, "val")

    def _should_validate(self, epoch: int) -> bool:
        return self.valid_loader is not None and super()._should_validate(epoch)

    @torch.inference_mode()
    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        model = self._begin_validation()
        loader, total, stride = self._budget_valid_loader()
        deadline = self.pass_deadline()
        if self.budget is not None:
            self.budget.begin_validation()
        sums: dict[str, torch.Tensor] = {}  # on the device, read once at the end
        batches = done = 0
        reason = None
        shown = Progress(len(loader), f"validation of epoch {epoch}/{self.epochs}", "batch")
        batches_checked = interrupt.checked(loader, f"the validation of epoch {epoch}", self.dist.any)
        for batch_index, (images, targets) in enumerate(batches_checked):
            inputs, targets = self._to_device(images, targets)
            with autocast(self.amp, self.device):
                parts, outputs = self._valid_forward(model, inputs, targets)
            for key, value in parts.items():
                sums[key] = sums[key] + value if key in sums else value.double()
            batches += 1
            done += len(images)
            self._update_metrics(outputs, targets)
            self._collect_visuals(batch_index, images, targets, outputs)
            shown.update(images=len(images))
            if (reason := deadline.reason()) is not None:
                break
        shown.close()
        if self.budget is not None:
            self.budget.end_validation(done)
        if done < (total or math.inf) and (reason is not None or stride > 1):
            every = f" (1 image in {stride}{', then cut' if reason else ''})" if stride > 1 else ""
            of = f" of {total}" if total is not None else ""
            logger.info("validation on %d%s images%s: %s", done, of, every, reason or BUDGET_ENDS)
        self._write_visuals(epoch)
        return self._valid_log(self._read(sums, epoch), batches)

    def _budget_valid_loader(self):
        """The validation loader this epoch iterates, the images of a whole pass and the stride it keeps.

        Without a time budget, :attr:`valid_loader` itself (and None for its images). With one, its batches in
        :func:`~sever.utils.time_budget.spread_order` (a pass cut at its deadline has scored
        an even subset), keeping every k-th image only when the measured validation, scaled to
        the machine's speed now, would not fit in the budget (:meth:`TimeBudget.validation_stride`).
        """
        if self.budget is None or not isinstance(self.valid_loader, DataLoader):
            return self.valid_loader, None, 1  # the images of a pass are counted only where a budget needs them
        batches = [list(batch) for batch in self.valid_loader.batch_sampler]
        total = sum(len(batch) for batch in batches)
        self.budget.valid_images = total
        stride = self.budget.validation_stride(total)
        if stride > 1 or self._spread_loader is None:
            kept = even_batches(batches, stride)
            loader = self.valid_loader
            spread = DataLoader(loader.dataset, batch_sampler=[kept[i] for i in spread_order(len(kept))],
                                num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                                pin_memory=loader.pin_memory, persistent_workers=stride == 1 and loader.num_workers > 0,
                                worker_init_fn=loader.worker_init_fn)
            if stride > 1:
                return spread, total, stride
            self._spread_loader = spread
        return self._spread_loader, total, 1

    def _collect_visuals(self, batch_index, images, targets, outputs) -> None:
        """Hook: keep what :meth:`_write_visuals` shows (called for each validation batch).

        ``images`` are the loader's (on the CPU, not normalised), ``targets`` and
        ``outputs`` those of :meth:`_valid_forward` (on the device).
        """

    def _write_visuals(self, epoch: int) -> None:
        """Hook: write validation visuals to TensorBoard."""

    def _visual_room(self, batch_index: int) -> int:
        """How many more images a task's :meth:`_collect_visuals` may keep in ``_visuals``.

        0 without TensorBoard; the list is emptied at the first validation batch.
        """
        if batch_index == 0:
            self._visuals = []
        return 0 if self.writer is None else max(self.vis_images - len(self._visuals), 0)

    # ------------------------------------------------------------------ checkpoint extras

    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"scaler": self.scaler.state_dict()}
        if self.ema is not None:
            state["ema_state_dict"] = self.ema.state_dict()
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema_state_dict") is not None:
            self.ema.load_state_dict(state["ema_state_dict"])


def even_batches(batches: list[list[int]], stride: int) -> list[list[int]]:
    """``batches`` of dataset indices keeping every ``stride``-th image (counted across the batches, in order);
    batches left empty are dropped, the others keep their images' grouping (one padded size each)."""
    position = 0
    kept = []
    for batch in batches:
        chosen = [index for offset, index in enumerate(batch, start=position) if offset % stride == 0]
        position += len(batch)
        if chosen:
            kept.append(chosen)
    return kept


@TRAINERS.register
class SegmentationTrainer(Trainer):
    """Trains mask models; TensorBoard shows ground truth and predictions overlaid.

    Mask pixels holding ``PAD_LABEL`` are padding (a crop larger than its image, a
    batch of mixed sizes): on the device the targets become ``(masks (B, C, H, W)
    0/1, valid (B, 1, H, W) bool)`` and the loss and the metrics score the valid
    pixels only; ``valid`` is None for a batch without padding. In validation the
    padded input pixels are set to 0, the model's own padding, so a batch scores
    each image as it would score alone.
    """

    def _to_device(self, images, targets):
        # whether the batch holds padding, read from the loader's host copy: numpy() never waits for a device
        padded = bool((targets[:, :1].numpy() == PAD_LABEL).any())
        inputs, masks = super()._to_device(images, targets)
        if not padded:
            return inputs, (masks, None)
        valid = masks[:, :1] != PAD_LABEL
        return inputs, (masks.masked_fill(~valid, 0), valid)

    def _forward_loss(self, images, targets):
        logits = self.network(images)
        return self._masked_loss_parts(logits, *targets), logits

    def _valid_forward(self, model, images, targets):
        masks, valid = targets
        if valid is not None:
            images = images.masked_fill(~valid, 0)
        logits = model(images) if self.tiling is None else self._tiled_logits(model, images)
        return self._masked_loss_parts(logits, masks, valid), logits

    def _tiled_logits(self, model, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` of normalised images ``(B, 1, H, W)``, each predicted tile by tile.

        The tiles' probabilities are blended as ``sever predict --tile`` blends them, then
        turned back into logits (clamped to ``[1e-6, 1 - 1e-6]`` first) for the loss and the metrics.
        """
        def segment(tiles: torch.Tensor) -> torch.Tensor:  # (N, h, w) -> probabilities (N, C, h, w)
            return torch.sigmoid(model(tiles.unsqueeze(1)).float())

        probs = torch.stack([self.tiling.predict(segment, image[0], self.config["classes"]) for image in images])
        return torch.logit(probs, eps=1e-6)

    def _masked_loss_parts(self, logits, masks, valid):
        """The loss parts; ``valid`` is None when the batch has no padding (:meth:`_to_device`), and
        goes to the loss only when it is not, so a loss without a ``valid`` argument (e.g. a plain
        torch loss) trains on unpadded data."""
        return self._loss_parts(logits, masks) if valid is None else self._loss_parts(logits, masks, valid)

    def _update_metrics(self, outputs, targets) -> None:
        for metric in self.metrics:
            metric.update(outputs, *targets)

    def _collect_visuals(self, batch_index, images, targets, logits) -> None:
        take = self._visual_room(batch_index)
        if not take:
            return
        masks, valid = targets
        if valid is None:
            valid = torch.ones_like(masks[:, :1], dtype=torch.bool)
        masks, valid = masks[:take].cpu().numpy(), valid[:take].cpu().numpy()
        predicted = (torch.sigmoid(logits[:take].float()) > 0.5).cpu().numpy()
        for image, truth, pred, own in zip(images[:take].float().cpu().numpy(), masks, predicted, valid):
            height, width = int(own[0].any(1).sum()), int(own[0].any(0).sum())  # the image's own pixels
            grey = to_uint8_image(image[0, :height, :width])
            self._visuals.append(np.concatenate([overlay_masks(grey, truth[:, :height, :width]),
                                                 overlay_masks(grey, pred[:, :height, :width])], axis=0))

    def _write_visuals(self, epoch: int) -> None:
        if self.writer is None or not getattr(self, "_visuals", None):
            return
        height, width = (max(v.shape[axis] for v in self._visuals) for axis in (0, 1))
        grid = np.zeros((len(self._visuals), height, width, 3), np.uint8)  # mixed sizes: black at the bottom/right
        for tile, visual in zip(grid, self._visuals):
            tile[: visual.shape[0], : visual.shape[1]] = visual
        self.writer.add_images("val/truth_above_prediction", grid, epoch, dataformats="NHWC")  # truth above
        self._visuals = []


@TRAINERS.register
class ClassificationTrainer(Trainer):
    """Trains defect-presence classifiers; TensorBoard shows a PR curve per class."""

    def _collect_visuals(self, batch_index, images, targets, logits) -> None:
        if batch_index == 0:
            self._probs, self._labels = [], []
        if self.writer is not None:
            self._probs.append(torch.sigmoid(logits.float()).cpu())
            self._labels.append(targets.cpu())

    def _write_visuals(self, epoch: int) -> None:
        if self.writer is None or not getattr(self, "_probs", None):
            return
        probs, labels = torch.cat(self._probs), torch.cat(self._labels)
        for c in range(probs.shape[1]):
            self.writer.add_pr_curve(f"val/pr_class_{c}", labels[:, c], probs[:, c], epoch)
        self._probs, self._labels = [], []
