"""Training callbacks: exact mid-epoch backups, NaN-safe checkpoints, a one-line epoch summary.

Keras 3.15's ``keras.callbacks.BackupAndRestore`` records ``{"epoch", "batch"}`` when it saves
mid-epoch, but on restore it only reads ``epoch``: the interrupted epoch is run again from step 0
starting from the mid-epoch weights, so that epoch gets more optimizer steps than the others,
its logged loss/metrics cover only the steps after the restart, and the input stream starts
over. It also writes the weights file and then the metadata in place, so a kill between or
during the two writes leaves a torn state. ``ResumableBackup`` below fixes all of that:

- one state = a weights file (model + optimizer, so the optimizer's momentum and iteration
  count), an ``.npz`` with the running epoch metrics (loss mean, confusion matrix) and the
  dropout RNG states, and ``state.json`` naming them, with the epoch, the step within it and
  the global step. Files are written under new names first and ``state.json`` is replaced
  atomically last, so a kill at any moment leaves the previous complete state;
- ``fcn_keras.train`` reads it before ``fit`` and finishes the interrupted epoch with exactly
  the missing steps, with the epoch's metric accumulators restored, and skips the batches
  already consumed in the (deterministic) input stream.

Checkpoints (``best.keras``, ``last.keras``) are never written from non-finite weights, and
backups are not taken once the loss is NaN, so the last good state survives a divergence.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fcn_keras.checks import check_int
from fcn_keras.files import atomic_path, copy_atomic, write_json_atomic

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"  # the latest complete state (mid-epoch or epoch end)
EPOCH_STATE_FILE = "epoch.json"  # the latest epoch-end state

# --- Atomic files -----------------------------------------------------------------------------


def save_model_atomic(model: keras.Model, path: str | os.PathLike) -> None:
    """Saves ``model`` as a ``.keras`` file, atomically and without the optimizer's state.

    Keras 3 always stores the optimizer's variables in a ``.keras`` file (for SGD with
    momentum as much again as the weights, for Adam twice as much); trained models for
    evaluation, export and ``--init_from`` need only the weights, and the backup holds the
    optimizer. The compile configuration is kept, so ``load_model`` still compiles the model
    (with a fresh optimizer).
    """
    optimizer = model.optimizer
    model.optimizer = None
    try:
        with atomic_path(path) as tmp:
            model.save(tmp)
    finally:
        model.optimizer = optimizer


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def nonfinite_weights(model: keras.Model) -> list[str]:
    """The paths of the trainable weights of ``model`` holding a NaN or an infinity."""
    return [v.path for v in model.trainable_variables if not np.isfinite(keras.ops.convert_to_numpy(v.value)).all()]


def _describe(names: list[str]) -> str:
    """``names`` for a log line: the first five, then how many more."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# --- Backup and exact resume ------------------------------------------------------------------


def _seed_variables(model: keras.Model) -> list:
    """The RNG state variables of the model's layers (dropout masks), in a stable order."""
    return [v for v in model.variables if "seed_generator" in v.path]


def read_backup(backup_dir: str | os.PathLike, name: str = STATE_FILE) -> dict[str, Any] | None:
    """The last complete backup state of a run, or ``None`` when there is none.

    Args:
        backup_dir: the run's ``backup/`` folder.
        name: ``STATE_FILE`` (the latest state) or ``EPOCH_STATE_FILE`` (the latest at an
            epoch end).

    Returns:
        The parsed ``state.json``: ``epoch`` (epochs finished), ``step`` (steps of epoch
        ``epoch`` already done), ``global_step``, ``weights`` and ``arrays`` (file names in
        ``backup_dir``), ``best`` (best monitored value so far or ``None``), ``best_epoch``,
        ``elapsed_s`` and ``images`` (training wall time and images seen before the backup).

    Raises:
        ValueError: the file is not such a state (cut short or edited), naming it and what to do.
    """
    path = Path(backup_dir) / name
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict) or not {"epoch", "step", "global_step", "weights", "arrays"} <= set(state):
            raise ValueError("not a backup state")
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError.
        raise ValueError(f"backup state {path} is damaged ({error}); delete {Path(backup_dir)} to start the run "
                         "afresh, or restore the file") from None
    return state


def agreed_backup(backup_dirs: list[Path], own: Path) -> dict[str, Any] | None:
    """The backup state that every worker of a multi-worker run resumes from: each worker writes
    its own backup, so a kill can land between their writes and leave them at different steps,
    which no worker could resume from (their weights would differ). Then the last epoch-end
    state (``epoch.json``), if the workers agree on it.

    Args:
        backup_dirs: every worker's ``backup/`` folder (the chief's and ``workers/<i>/backup``).
        own: this worker's, one of them.

    Returns:
        ``own``'s state to resume from (its ``state.json`` or its ``epoch.json``), or ``None``
        when no worker has a backup.

    Raises:
        ValueError: the workers' backups differ and so do (or are missing) their epoch-end states.
    """
    latest = {folder: read_backup(folder) for folder in backup_dirs}
    if all(state is None for state in latest.values()):
        return None
    steps = {folder: None if state is None else state["global_step"] for folder, state in latest.items()}
    if len(set(steps.values())) == 1:
        return latest[own]
    epoch_ends = {folder: read_backup(folder, EPOCH_STATE_FILE) for folder in backup_dirs}
    epoch_steps = {None if state is None else state["global_step"] for state in epoch_ends.values()}
    described = ", ".join(f"{folder}: {step}" for folder, step in steps.items())
    if len(epoch_steps) == 1 and None not in epoch_steps:
        logger.warning("the workers' backups are at different steps (%s; a kill between their writes): all resume "
                       "from the last epoch end, global step %d", described, epoch_steps.pop())
        return epoch_ends[own]
    raise ValueError(
        f"the workers' backups are at different steps ({described}) and share no epoch-end state: no worker can resume "
        "with the others' weights. Delete the backup folders (the chief's and workers/*/backup) to start the run afresh"
    )


class ResumableBackup(keras.callbacks.Callback):
    """Backs up the complete training state every ``save_freq`` steps and at each epoch end
    (or those of ``schedule``).

    Args:
        backup_dir: folder of the backups (created); holds one complete state at a time.
        save_freq: steps between mid-epoch backups (``0``: only at epoch ends).
        steps_per_epoch: steps of a full epoch (to know the step within the epoch).
        batch_size: global batch size (to count images).
        start: the state this run starts from (``read_backup``) or ``None``; its metric
            accumulators are added back after the first step.
        best_tracker: the ``BestAndLastCheckpoint`` whose best value is recorded in the state.
        restore_metrics: save and restore the epoch's metric accumulators. ``False`` under
            ``tf.distribute``, whose metric variables are per replica (sync on read) and
            cannot be assigned from a callback: the resumed epoch's logged loss and mean IU
            then cover only the steps after the restart.
        schedule: the epoch ends to back up (``None``: every epoch); the same as the
            checkpoint's, so that the epoch-end state and ``last.keras`` are of the same epoch.
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        *,
        save_freq: int,
        steps_per_epoch: int,
        batch_size: int,
        start: dict[str, Any] | None = None,
        best_tracker: BestAndLastCheckpoint | None = None,
        restore_metrics: bool = True,
        schedule: CheckpointSchedule | None = None,
    ) -> None:
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.schedule = schedule
        self.save_freq = int(save_freq)
        self.steps_per_epoch = int(steps_per_epoch)
        self.batch_size = int(batch_size)
        self.best_tracker = best_tracker
        self.restore_metrics = restore_metrics
        self._pending_arrays = None
        self._epoch = 0
        self._step_offset = 0  # steps of the current epoch done before this fit() call
        self._diverged = False
        self.divergence = ""  # what became non-finite: "the loss" or "the weights (<paths>)"
        self._elapsed_before = 0.0
        self._images_before = 0
        self._fit_start = time.perf_counter()
        self._images = 0
        if start is not None:
            self._elapsed_before = float(start.get("elapsed_s", 0.0))
            self._images_before = int(start.get("images", 0))
            if start.get("step", 0) and restore_metrics:
                self._pending_arrays = self.backup_dir / start["arrays"]

    # --- Bookkeeping ---

    @property
    def elapsed_s(self) -> float:
        """Training wall time including the runs before a resume."""
        return self._elapsed_before + time.perf_counter() - self._fit_start

    @property
    def diverged(self) -> bool:
        """Whether a non-finite loss, or non-finite weights at a backup, were seen (backups
        stopped then)."""
        return self._diverged

    @property
    def images_this_process(self) -> int:
        """Training images seen by this process (for its images/s)."""
        return self._images

    @property
    def images(self) -> int:
        """Training images seen including the runs before a resume."""
        return self._images_before + self._images

    def begin_partial_epoch(self, step_offset: int) -> None:
        """Tells the callback that the next ``fit`` continues an epoch at ``step_offset``."""
        self._step_offset = int(step_offset)

    # --- Callback hooks ---

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def _restore_metrics(self) -> None:
        """Adds the interrupted epoch's saved accumulators to the metric variables.

        Keras builds the compiled metrics inside the first train step, so their variables exist
        only after it: the saved sums are added then. Exact because every metric state here is
        a sum over steps (the loss mean's total and count, the confusion matrix).
        """
        with np.load(self._pending_arrays) as arrays:
            for variable in self.model.metrics_variables:
                key = f"metric/{variable.path}"
                if key not in arrays.files:
                    raise ValueError(f"the backup {self._pending_arrays} has no metric state {variable.path!r}")
                variable.assign(variable.value + keras.ops.convert_to_tensor(arrays[key], dtype=variable.dtype))
        self._pending_arrays = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._images += self.batch_size
        if self._pending_arrays is not None:
            self._restore_metrics()
        if logs is not None and not _finite(logs.get("loss")):
            self._diverged, self.divergence = True, "the loss"
            return
        step = self._step_offset + batch + 1
        if self.save_freq and step % self.save_freq == 0 and step < self.steps_per_epoch:
            self.save(self._epoch, step)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._step_offset = 0
        if self._diverged or (logs is not None and not _finite(logs.get("loss"))):
            self._diverged, self.divergence = True, self.divergence or "the loss"
            logger.error("not backing up epoch %d: the loss is not finite", epoch + 1)
            return
        if self.schedule is None or self.schedule.due(epoch, self.model):
            # The last step's update can make a weight non-finite after a finite loss. The
            # checkpoint (same schedule, called before) has read the weights this epoch: reuse it.
            tracker = self.best_tracker
            checked = tracker is not None and tracker.weights_checked_epoch == epoch
            bad = tracker.nonfinite if checked else nonfinite_weights(self.model)
            if bad:
                self._diverged, self.divergence = True, f"the weights ({_describe(bad)})"
                self.model.stop_training = True
                logger.error("not backing up epoch %d: %s are not finite", epoch + 1, self.divergence)
                return
            start = time.perf_counter()
            self.save(epoch + 1, 0)
            _log_slow_write(f"epoch {epoch + 1}: wrote the backup (model and optimizer state)", start)

    # --- Saving ---

    def save(self, epoch: int, step: int) -> None:
        """Writes a complete state: ``epoch`` epochs done plus ``step`` steps of the next."""
        model = self.model
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        # The batch's position, not the optimizer's count: under fp16 loss scaling skipped steps
        # are not counted, and two states would share one file name.
        global_step = epoch * self.steps_per_epoch + step
        stem = f"state-{global_step:09d}"
        weights_name, arrays_name = f"{stem}.weights.h5", f"{stem}.npz"
        # Durable: state.json (durable itself) will name these files.
        with atomic_path(self.backup_dir / weights_name, durable=True) as tmp_weights:
            model.save_weights(tmp_weights)
        arrays = {}
        if self.restore_metrics:  # Under tf.distribute they are per-replica (sync on read).
            arrays = {f"metric/{v.path}": keras.ops.convert_to_numpy(v.value) for v in model.metrics_variables}
        arrays.update(
            {f"seed_{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(_seed_variables(model))}
        )
        with atomic_path(self.backup_dir / arrays_name, durable=True) as tmp_arrays, open(tmp_arrays, "wb") as f:
            np.savez(f, **arrays)
        best = self.best_tracker
        record = {
                "epoch": epoch,
                "step": step,
                "global_step": global_step,
                "weights": weights_name,
                "arrays": arrays_name,
                "best": None if best is None else best.best,
                "best_epoch": None if best is None else best.best_epoch,
                "best_basis": None if best is None else best.basis,
                "elapsed_s": self.elapsed_s,
                "images": self.images,
        }
        write_json_atomic(self.backup_dir / STATE_FILE, record)
        if step == 0:
            write_json_atomic(self.backup_dir / EPOCH_STATE_FILE, record)
        self._remove_unreferenced()
        logger.debug("backup: epoch %d step %d (global step %d)", epoch, step, global_step)

    def _remove_unreferenced(self) -> None:
        """Deletes state files that neither ``state.json`` nor ``epoch.json`` names."""
        keep = set()
        for name in (STATE_FILE, EPOCH_STATE_FILE):
            record = read_backup(self.backup_dir, name)
            if record is not None:
                keep.update((record["weights"], record["arrays"]))
        for path in self.backup_dir.glob("state-*"):
            if path.name not in keep:
                path.unlink()

    def roll_back_to_epoch_end(self) -> dict[str, Any] | None:
        """After a divergence: makes the last epoch-end state the one a rerun resumes from.

        Mid-epoch backups taken just before the loss became NaN may already hold exploded
        (finite but huge) weights; the state at the end of the last good epoch is the one that
        ``last.keras`` also holds. Returns that state, or ``None`` if no epoch ended yet (then
        the backup is removed and a rerun starts afresh).
        """
        record = read_backup(self.backup_dir, EPOCH_STATE_FILE)
        if record is None:
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            return None
        write_json_atomic(self.backup_dir / STATE_FILE, record)
        self._remove_unreferenced()
        return record


def restore_backup(model: keras.Model, backup_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Loads a ``ResumableBackup`` state into a compiled model: weights, optimizer, RNG states.

    Args:
        model: the compiled model of the same run (same layers and optimizer).
        backup_dir: the backup folder.
        state: ``read_backup(backup_dir)``.

    Raises:
        ValueError: the backup's weights file cannot be read (cut short), or its optimizer
            state does not fit the model's optimizer (Keras would skip it with a warning, and
            the run would go on with a fresh optimizer: its step count, schedule and momenta lost).
    """
    backup_dir = Path(backup_dir)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    path = backup_dir / state["weights"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except OSError as error:  # h5py: a truncated or otherwise damaged file
            raise ValueError(
                f"backup {str(path)!r} cannot be read ({error}): the run cannot resume from it (a file cut short by a "
                "crash or power loss?). last.keras holds the last checkpointed epoch; deleting the backup folder "
                "starts the run afresh, which replaces last.keras and best.keras: copy them first"
            ) from error
    for warning in caught:
        if "Skipping variable loading for optimizer" in str(warning.message):
            raise ValueError(
                f"backup {str(path)!r} holds an optimizer state that does not fit this run's optimizer ({warning.message}"
                "): resume with the settings the run recorded in config.json, or use another --output_dir"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    with np.load(backup_dir / state["arrays"]) as arrays:
        for index, variable in enumerate(_seed_variables(model)):
            key = f"seed_{index}"
            if key in arrays:
                variable.assign(arrays[key])


# --- Checkpoints ------------------------------------------------------------------------------


class CheckpointSchedule:
    """Which epoch ends write ``last.keras``/``best.keras`` and the epoch-end backup.

    Every ``every``-th epoch, the run's last epoch, and the epoch after which training stops
    early (a time budget or a NaN loss has set ``model.stop_training``: the callbacks that do so
    must come first in the list). With many short epochs (a time-budgeted GPU run) writing the
    0.5 GB model and the 1.6 GB backup (FCN-VGG16 with Adam) at every epoch end can take longer
    than the epoch itself.

    Args:
        every: epochs between checkpoints (>= 1; 1: every epoch).
        epochs: the epoch count of the run (its last epoch is always checkpointed).
    """

    def __init__(self, every: int, epochs: int) -> None:
        self.every = check_int("every", every, 1)
        self.epochs = int(epochs)

    def due(self, epoch: int, model: keras.Model) -> bool:
        """Whether the end of ``epoch`` (0-based) is a checkpoint."""
        done = epoch + 1
        return done % self.every == 0 or done >= self.epochs or bool(model.stop_training)


class BestAndLastCheckpoint(keras.callbacks.Callback):
    """Saves ``last.keras`` after every epoch (or those of ``schedule``) and ``best.keras`` when
    ``monitor`` improves (judged at those epochs).

    Unlike ``keras.callbacks.ModelCheckpoint`` it never writes non-finite weights (after a NaN
    loss the previous files stay), and writes atomically. An improving epoch's ``best.keras`` is
    a hard link to its ``last.keras`` (``copy_atomic``): the weights are written once.

    Args:
        output_dir: where ``best.keras`` and ``last.keras`` go.
        monitor: the log key to maximise (``"val_mean_iu"`` or ``"mean_iu"``).
        best: best value reached before a resume, or ``None``.
        best_epoch: its epoch (1-based), or ``None``.
        enabled: ``False`` on non-chief workers of a multi-worker run (nothing written).
        schedule: the epochs to checkpoint (``None``: every epoch).
        basis: what ``best`` is measured on (JSON-able, e.g. the monitor and the validation
            split), kept in the backup so that a resume on another basis starts ``best`` anew.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        monitor: str,
        *,
        best: float | None = None,
        best_epoch: int | None = None,
        enabled: bool = True,
        schedule: CheckpointSchedule | None = None,
        basis: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.monitor = monitor
        self.basis = basis
        self.best = best
        self.best_epoch = best_epoch
        self.enabled = enabled
        self.schedule = schedule
        self.last_good_epoch: int | None = None
        # The last epoch (0-based) whose weights were checked, and the non-finite ones then.
        self.weights_checked_epoch: int | None = None
        self.nonfinite: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.schedule is not None and not self.schedule.due(epoch, self.model):
            return
        logs = logs or {}
        if _finite(logs.get("loss")):
            self.weights_checked_epoch, self.nonfinite = epoch, nonfinite_weights(self.model)
            bad = self.nonfinite
        else:
            bad = ["loss"]
        if bad:
            logger.error(
                "epoch %d ended with non-finite values (%s): best.keras and last.keras are left as "
                "they were (last good epoch: %s)",
                epoch + 1,
                _describe(bad),
                "none" if self.last_good_epoch is None else self.last_good_epoch,
            )
            return
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"checkpoint monitor {self.monitor!r} is not in the logs {sorted(logs)}")
        if self.enabled:
            start = time.perf_counter()
            save_model_atomic(self.model, self.output_dir / "last.keras")
            _log_slow_write(f"epoch {epoch + 1}: wrote last.keras", start)
        self.last_good_epoch = epoch + 1
        if not math.isfinite(float(value)):  # Finite weights, a non-finite score: never the best.
            logger.warning("epoch %d: %s is %s: not a candidate for best.keras", epoch + 1, self.monitor, value)
        elif self.best is None or float(value) > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            if self.enabled:  # the same weights as last.keras: link, don't write them again
                copy_atomic(self.output_dir / "last.keras", self.output_dir / "best.keras")
            logger.info("epoch %d: %s improved to %.4f, saved best.keras", epoch + 1, self.monitor, value)


# --- TensorBoard ------------------------------------------------------------------------------


class ScalarTensorBoard(keras.callbacks.Callback):
    """Writes the epoch logs as TensorBoard scalars (``train/`` and ``validation/`` runs).

    ``keras.callbacks.TensorBoard`` needs the ``tensorboard`` package for ``tf.summary.scalar``;
    this writes the same event files with TensorFlow's core ``tf.summary.write`` and the scalar
    plugin's metadata, so no extra dependency is needed and ``tensorboard --logdir`` reads them.
    Works under every backend (TensorFlow is always installed for tf.data).

    Args:
        log_dir: the ``tensorboard/`` folder of the run.
        enabled: ``False`` writes nothing (non-chief workers).
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writers: dict = {}

    def _write(self, run: str, tag: str, value: float, step: int) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(str(self.log_dir / run))
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self._writers[run].as_default():
            tf.summary.write(f"epoch_{tag}", tf.constant(float(value)), step=step, metadata=metadata)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.enabled:
            return
        for key, value in (logs or {}).items():
            run, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._write(run, tag, value, epoch + 1)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def truncate_tensorboard(log_dir: str | os.PathLike, epochs_done: int) -> int:
    """On resume: leaves in a run's ``tensorboard/`` only the scalars of the first ``epochs_done``
    epochs (steps ``1 .. epochs_done``), as ``log.csv`` is truncated, so that an epoch redone after
    a kill or a divergence is not written twice (TensorBoard would draw both values at one step).

    Each run folder's event files are replaced, atomically, by one file of the events kept. A
    file cut short by a kill in mid-write keeps its whole records (logged). Files older than a
    ``.truncated`` file were read into it: if a kill left them (between its write and their
    removal), they are removed first, not read twice.

    Args:
        log_dir: the run's ``tensorboard/`` folder (absent: nothing to do).
        epochs_done: the epochs the resumed run keeps.

    Returns:
        The number of scalar events removed.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    removed = 0
    for run_dir in sorted(p for p in Path(log_dir).glob("*") if p.is_dir()):
        files = sorted(run_dir.glob("events.out.tfevents.*"))
        truncated = [path for path in files if path.name.endswith(".truncated")]
        newest = files.index(truncated[-1]) if truncated else 0
        for path in files[:newest]:
            path.unlink()  # already in the newest .truncated file
        files = files[newest:]
        kept, dropped, torn = [], 0, []
        for path in files:
            try:
                for record in tf.data.TFRecordDataset(str(path)):
                    event = event_pb2.Event.FromString(record.numpy())
                    if event.HasField("summary") and event.step > epochs_done:
                        dropped += 1
                    else:
                        kept.append(record.numpy())
            except tf.errors.DataLossError:
                torn.append(path.name)
        if torn:
            logger.warning("tensorboard: %s cut short in mid-write (a killed run): its whole events kept",
                           ", ".join(torn))
        if not dropped and not torn:
            continue
        # An event file's name sorts after the old ones' (TensorBoard reads them in name order).
        target = run_dir / f"events.out.tfevents.{time.time():.6f}.truncated"
        with atomic_path(target) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
            for record in kept:
                writer.write(record)
        for path in files:
            path.unlink()
        removed += dropped
    if removed:
        logger.info("tensorboard: removed %d scalar(s) of epochs after %d (redone now)", removed, epochs_done)
    return removed


# --- Time budget ------------------------------------------------------------------------------


class TimeBudget(keras.callbacks.Callback):
    """Stops training at the end of the first epoch by which ``seconds`` of training have passed.

    Epoch granularity keeps every artefact whole: the stop comes after the epoch's checkpoints
    and backup are written, so the run ends as a finished run with fewer epochs.

    Args:
        seconds: the budget (> 0).
        elapsed: returns the training time spent so far in seconds (``ResumableBackup.elapsed_s``:
            wall time including compilation and the processes before a resume).
    """

    def __init__(self, seconds: float, elapsed) -> None:
        super().__init__()
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0. Received: seconds={seconds!r}")
        self.seconds = float(seconds)
        self.elapsed = elapsed
        self.stopped_after_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        spent = self.elapsed()
        if spent >= self.seconds:
            self.stopped_after_epoch = epoch + 1
            self.model.stop_training = True
            logger.info("time budget: %.1f s of training >= %.1f s: stopping after epoch %d", spent, self.seconds, epoch + 1)


def _log_slow_write(what: str, start: float) -> None:
    """Logs ``what`` and its duration when it took a second or more (a full-size FCN's files:
    seconds of silence after the epoch line otherwise)."""
    seconds = time.perf_counter() - start
    if seconds >= 1.0:
        logger.info("%s in %.1f s", what, seconds)


# --- Progress ---------------------------------------------------------------------------------


def format_rate(images_per_s: float | None) -> str:
    """A throughput for a log line: one decimal from 10 img/s up, three significant digits
    below (a full-size VGG16 FCN on a CPU runs at a few hundredths of an image per second)."""
    if images_per_s is None:
        return "-"
    return f"{images_per_s:.1f}" if images_per_s >= 10 else f"{images_per_s:.3g}"


class RunProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, headed ``Epoch n/N`` with the run's ``N`` also where ``fit`` runs
    only the rest of a resumed epoch (``epochs=epoch + 1``, which Keras would print as ``N``)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.run_epochs = epochs

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        self.epochs = self.run_epochs


class EpochSummary(keras.callbacks.Callback):
    """Logs one line per epoch: epoch, loss, mean IU, val mean IU, time and images/s.

    The first step of an epoch is timed apart: in the first epoch of a process it holds the
    compilation of the train step (XLA), so ``steady_images_per_s`` (the steps after it) is the
    training speed, and ``first_step_s`` what compiling cost.

    Args:
        epochs: total number of epochs (for ``epoch 3/8``).
        batch_size: global batch size (images per step).
    """

    def __init__(self, epochs: int, batch_size: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []
        self._start = 0.0
        self._first_step_end = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps += 1
        if self._steps == 1:
            self._first_step_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        seconds = time.perf_counter() - self._start
        rate = self._steps * self.batch_size / seconds if seconds > 0 else float("nan")
        first = self._first_step_end - self._start if self._steps else None
        after_first = seconds - first if first is not None else 0.0
        steady = (self._steps - 1) * self.batch_size / after_first if self._steps > 1 and after_first > 0 else None
        row = {
            "epoch": epoch + 1,
            "loss": logs.get("loss"),
            "mean_iu": logs.get("mean_iu"),
            "val_loss": logs.get("val_loss"),
            "val_mean_iu": logs.get("val_mean_iu"),
            "seconds": seconds,
            "images_per_s": rate,
            "steps": self._steps,
            "first_step_s": first,
            "steady_images_per_s": steady,
        }
        self.history.append(row)

        def fmt(key: str) -> str:
            value = row[key]
            return "-" if value is None else f"{float(value):.4f}"

        logger.info(
            "epoch %d/%d: loss %s  mean_iu %s  val_loss %s  val_mean_iu %s  %.1f s  %s img/s  "
            "(first step %s s, then %s img/s)",
            epoch + 1,
            self.epochs,
            fmt("loss"),
            fmt("mean_iu"),
            fmt("val_loss"),
            fmt("val_mean_iu"),
            seconds,
            format_rate(rate),
            "-" if first is None else f"{first:.1f}",
            format_rate(steady),
        )
