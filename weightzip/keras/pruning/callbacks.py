"""Training callbacks for pruning: advance the pruning step, and log per-layer sparsity.

``UpdatePruningStep`` is required whenever a model with :class:`PruneLowMagnitude` layers is trained (as
in TFMOT): it is what recomputes the masks at the steps the schedule names.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os

import keras
import numpy as np
from keras import ops

from weightzip.atomic import write_bytes_atomically
from weightzip.core.errors import InvalidArgumentError
from weightzip.core.pruning import measured_sparsity
from weightzip.keras._rewrite import iter_layers
from weightzip.keras.pruning.wrapper import PruneLowMagnitude


def prunable_wrappers(model) -> list[PruneLowMagnitude]:
    """Every :class:`PruneLowMagnitude` layer of `model`, nested models included, in layer order."""
    return [layer for layer in iter_layers(model, include_root=True) if isinstance(layer, PruneLowMagnitude)]


class UpdatePruningStep(keras.callbacks.Callback):
    """Before each training batch at which a schedule prunes, recompute that wrapper's masks; at each epoch
    end record the step in every wrapper and re-apply the masks to the kernels.

    The step starts at the optimizer's iteration count, so resuming training resumes the schedule. With
    ``steps_per_execution`` > 1 the callback runs once per execution: a pruning step falling inside it is
    applied at its start (masks change between executions only).
    """

    def __init__(self):
        super().__init__()
        self.step = -1
        self._stride = 1
        self._epoch_start = 0
        self._wrappers: list[PruneLowMagnitude] = []

    def on_train_begin(self, logs=None):
        self._wrappers = prunable_wrappers(self.model)
        if not self._wrappers:
            raise InvalidArgumentError("UpdatePruningStep was given a model with no PruneLowMagnitude layers")
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        self.step = int(ops.convert_to_numpy(iterations)) if iterations is not None else 0
        self._stride = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.step

    def on_train_batch_begin(self, batch, logs=None):
        first = self._epoch_start + batch  # Keras passes the execution's first step within the epoch
        due = []
        for wrapper in self._wrappers:
            steps = [s for s in range(first, first + self._stride) if wrapper.pruning_schedule.should_prune(s)]
            if wrapper.built and steps:
                due.append((wrapper, steps[-1]))
        if due:
            _sync_backend_state(self.model)
            for wrapper, step in due:
                wrapper.update_masks(step)

    def on_train_batch_end(self, batch, logs=None):
        # Keras reports a partial last execution as a full one; on_epoch_end corrects from the optimizer.
        self.step = self._epoch_start + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        _sync_backend_state(self.model)
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        if iterations is not None:
            self.step = int(ops.convert_to_numpy(iterations))
        for wrapper in self._wrappers:
            if wrapper.built:
                wrapper.pruning_step.assign(max(self.step - 1, -1))
                wrapper.apply_masks()


def _sync_backend_state(model):
    """Make the model's variables current and writable from a callback.

    The JAX trainer keeps the training state outside the variables between syncs; after a sync it re-reads
    the variables before the next step, so masks assigned here take effect. Other backends need nothing.
    """
    sync = getattr(model, "jax_state_sync", None)
    if callable(sync):
        sync()


class PruningSummaries(keras.callbacks.Callback):
    """Log each pruned weight's measured sparsity and the schedule's target, at every epoch end.

    Always writes ``<log_dir>/pruning_summaries.csv`` (rewritten atomically each time, columns
    ``epoch, step, layer, weight, sparsity, target_sparsity``). With the TensorFlow backend and the
    ``tensorboard`` package installed (``tensorboard=None``: when both are there) it also writes
    TensorBoard scalars ``<layer>/<weight>/sparsity`` and ``<layer>/target_sparsity`` under
    ``<log_dir>/pruning``, like TFMOT's ``PruningSummaries``.
    """

    FIELDS = ("epoch", "step", "layer", "weight", "sparsity", "target_sparsity")

    def __init__(self, log_dir, *, tensorboard: bool | None = None):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise InvalidArgumentError(f"log_dir must be a non-empty path, got {log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        available = keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard") is not None
        if tensorboard and not available:
            raise InvalidArgumentError("tensorboard=True needs the TensorFlow backend and the tensorboard package")
        self.tensorboard = available if tensorboard is None else bool(tensorboard)
        self.rows: list[dict] = []
        self._writer = None

    @property
    def csv_path(self) -> str:
        return os.path.join(self.log_dir, "pruning_summaries.csv")

    def on_train_begin(self, logs=None):
        os.makedirs(self.log_dir, exist_ok=True)
        if self.tensorboard and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "pruning"))

    def on_epoch_end(self, epoch, logs=None):
        new_rows = []
        for wrapper in prunable_wrappers(self.model):
            if not wrapper.built:
                continue
            step = int(ops.convert_to_numpy(wrapper.pruning_step))
            target = wrapper.pruning_schedule.sparsity_at(max(step, 0))
            for variable, mask in zip(wrapper.pruned_variables, wrapper.masks):
                effective = ops.convert_to_numpy(variable) * ops.convert_to_numpy(mask)
                new_rows.append({
                    "epoch": epoch, "step": step, "layer": wrapper.layer.name,
                    "weight": variable.name, "sparsity": measured_sparsity(effective),
                    "target_sparsity": target,
                })
        self.rows.extend(new_rows)
        self._write_csv()
        if self._writer is not None:
            self._write_tensorboard(new_rows)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _write_csv(self):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        write_bytes_atomically(self.csv_path, buffer.getvalue().encode("utf-8"), overwrite=True)

    def _write_tensorboard(self, rows):
        import tensorflow as tf

        with self._writer.as_default():
            for row in rows:
                step = max(row["step"], 0)
                tf.summary.scalar(f"{row['layer']}/{row['weight']}/sparsity", row["sparsity"], step=step)
                tf.summary.scalar(f"{row['layer']}/target_sparsity", row["target_sparsity"], step=step)
        self._writer.flush()


def layer_sparsities(model) -> dict[str, float]:
    """Measured sparsity of every pruned weight, keyed ``"<layer>/<weight>"`` (wrappers' effective kernels)."""
    result = {}
    for wrapper in prunable_wrappers(model):
        for variable, mask in zip(wrapper.pruned_variables, wrapper.masks):
            effective = np.asarray(ops.convert_to_numpy(variable)) * ops.convert_to_numpy(mask)
            result[f"{wrapper.layer.name}/{variable.name}"] = measured_sparsity(effective)
    return result
