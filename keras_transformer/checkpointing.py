"""Training that survives being killed and resumes exactly where it stopped.

`fit_resumable` wraps `model.fit`: it checkpoints every `save_every_steps`
training steps and, when the directory already holds a checkpoint, restores it
and continues from the same step of the same epoch on the same data. With op
determinism on (`keras.utils.set_random_seed(seed)` and
`tf.config.experimental.enable_op_determinism()`), a run killed any number of
times and restarted until done ends with the same weights, bit for bit, as a
run that was never interrupted.

Keras' own `BackupAndRestore` cannot do this: it restores only the epoch
number, not the step, the data position or the dropout random state, and it
overwrites its backup in place; under a multi-worker strategy (Keras 3.15)
every worker writes the same files, and a lost worker surfaces as
TensorFlow's `UnavailableError`.

A checkpoint holds:

- every variable of the model, including the states of the `SeedGenerator`s
  of its dropout layers: Keras tracks those in `model.variables` but not in
  `model.weights`, and its `.weights.h5` / `.keras` files (which save each
  layer's weights only) leave them out, so a model reloaded from them draws
  the dropout masks of step 0 again;
- every variable of the optimizer, including `iterations` (the
  learning-rate schedule reads it) and the moments;
- the model's metric variables (`model.metrics_variables`), so the logs of an
  epoch resumed halfway average over the whole epoch;
- Keras' global `SeedGenerator` (used by `keras.random` calls without a
  seed), Python's `random` state and NumPy's global random state;
- the position: global step, epoch and step within the epoch, plus the
  completed epochs' logs, so the returned `History` covers the whole run.

Each checkpoint is a folder `<directory>/ckpt-<step>` holding `state.npz`
and `checkpoint.json`. It is written beside, as `.tmp-ckpt-<step>-<pid>`,
with the manifest `checkpoint.json` (holding the SHA-256 of `state.npz` and
of itself) written last, and only then renamed into place, so a `ckpt-*`
folder is never half-written (the rule of `keras_transformer._files`); the
`keep` newest checkpoints are kept. A checkpoint that is nevertheless
unusable (a missing, edited or garbled manifest, a truncated or altered
`state.npz`) is skipped with a warning naming it, and the previous one is
used. Nothing the library cannot read is deleted:
an unreadable folder due for deletion is renamed `unreadable-ckpt-<step>`
(with a warning), and a directory holding checkpoints of a newer format is
refused with a `ValueError` before anything in it changes. A restore is all or
nothing: every variable is checked before any is assigned.

Not saved: the state of other callbacks (`EarlyStopping`'s patience,
`ReduceLROnPlateau`'s counters) and TensorFlow's stateful random ops
(`tf.random.uniform` with a global seed), whose hidden op counters cannot be
read. One process writes a directory at a time.

Under a `tf.distribute` strategy the same holds, reshuffling datasets
included: `fit_resumable` builds the model's metrics before each `fit`, so
the patched `fit` (`distribute.patch_distributed_fit`) does not start an
iteration of the dataset only to learn its shapes, as Keras' own does. (A
plain `model.fit` under a strategy therefore reads a reshuffling dataset
from its second iteration, `fit_resumable` from its first.) What is not bit
for bit: the logged averages of an epoch resumed halfway, to about one
float32 ulp, as the restored metric totals are split among the replicas.

Under `MultiWorkerMirroredStrategy` (tested with two workers, one of them
killed mid-epoch, then the chief):

- the chief (`distribute.is_chief`) alone writes checkpoints, as above; the
  other workers read every variable too (reading a metric total is a
  collective that needs them all) and write nothing;
- every worker reads the chief's folders, so on several machines the
  directory must be on a file system they all mount (NFS, say; not a
  `gs://` URL: the atomic write is a POSIX rename), as Keras'
  `BackupAndRestore` also needs a shared directory; the workers check that they found the same
  checkpoint, and refuse to start otherwise;
- each worker resumes on its own shard of the same batches (shard the
  dataset by data, `distribute.shard_dataset`);
- when a worker is lost, the others raise `distribute.WorkerLostError`
  naming the last complete checkpoint; rerunning every worker's command
  resumes from it. End the program with `distribute.finish(strategy)`.
"""

import dataclasses
import functools
import hashlib
import json
import os
import random
import re
import shutil
import warnings

import keras
import numpy as np

from keras_transformer._tensorflow import import_tensorflow
from keras_transformer import _compat, _files, distribute
from keras_transformer.models import trainer
from keras_transformer.validation import (
    check_non_negative_int,
    check_positive_int,
)

tf = import_tensorflow(__name__)

__all__ = ["Checkpoint", "fit_resumable", "latest_checkpoint"]

# 2: the manifest carries a SHA-256 checksum of itself.
FORMAT_VERSION = 2
STATE_FILE = "state.npz"
# Written last: a folder without it never finished writing.
MANIFEST_FILE = "checkpoint.json"
_MANIFEST_CHECKSUM = "manifest_sha256"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")
# Checkpoints this version could not read, kept for inspection (renamed so
# that they are neither resumed from nor overwritten).
_UNREADABLE_PREFIX = "unreadable-"
# Staging folders of an interrupted write and checkpoints being deleted.
_LEFTOVER_NAME = re.compile(r"^\.(tmp|old)-ckpt-\d+-\d+$")
_HASH_CHUNK_BYTES = 1 << 20
_GROUPS = ("model", "optimizer", "metrics", "global_seed_generator")
# Arguments that fit_resumable itself decides from the checkpoint.
_RESERVED_FIT_ARGUMENTS = ("x", "y", "initial_epoch")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One checkpoint read back from disk, checksum verified.

    Attributes:
        path: str. The `ckpt-<step>` folder.
        step: int. Training steps (batches) done, over all epochs.
        epoch: int. The epoch to continue (0-based).
        step_in_epoch: int. Batches of that epoch already done.
        steps_per_epoch: int. The `steps_per_epoch` of the run that wrote it.
        history: dict. Logs of the completed epochs, as in
            `History.history`.

    Example:

    ```python
    checkpoint = latest_checkpoint("checkpoints")
    if checkpoint is not None:
        checkpoint.restore(model)  # weights, optimizer and random states
    ```
    """

    path: str
    step: int
    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    history: dict
    _manifest: dict = dataclasses.field(repr=False, compare=False)
    _arrays: dict = dataclasses.field(repr=False, compare=False)

    def restore(self, model):
        """Loads the model, optimizer and random states into a compiled model.

        The optimizer is built first if it is not yet. Metric variables are
        left alone (`fit_resumable` restores them once `fit` has built them).

        All or nothing: every variable is checked against the checkpoint
        before any is assigned, and if an assignment fails anyway the
        variables are put back as they were.

        Raises:
            ValueError: the model's variables do not match the checkpoint's
                in number, shape or dtype (a different architecture).
        """
        # Built now, as the first train step would, to restore into.
        trainer.build_optimizer(model)
        groups = {"model": model.variables}
        if model.optimizer is not None:
            groups["optimizer"] = model.optimizer.variables
        _assign_groups(self, groups)
        self._restore_global_random_states()

    def _restore_global_random_states(self):
        saved = self._manifest["variables"]["global_seed_generator"]
        if saved:
            # Created (from Python's random) before Python's state is set.
            generator = _compat.global_seed_generator(create=True)
            _assign_groups(self, {"global_seed_generator": [generator.state]})
        else:
            # It did not exist yet at this step of the original run.
            _compat.clear_global_seed_generator()
        version, internal_state, gauss = self._manifest["python_random"]
        random.setstate((version, tuple(internal_state), gauss))
        numpy_random = self._manifest["numpy_random"]
        np.random.set_state(
            (
                numpy_random["algorithm"],
                self._arrays["numpy_random/keys"],
                numpy_random["position"],
                numpy_random["has_gauss"],
                numpy_random["cached_gaussian"],
            )
        )


def latest_checkpoint(directory):
    """Returns the newest usable `Checkpoint` in `directory`, or None.

    Checkpoints are tried from the highest step down. One that cannot be used
    (no manifest, a manifest that does not parse, a `state.npz` that is
    truncated, altered or unreadable) is skipped with a `UserWarning` naming
    its folder.

    Args:
        directory: str or path. The folder given to `fit_resumable`; need not
            exist.
    """
    directory = os.fspath(directory)
    for step, path in reversed(_checkpoint_folders(directory)):
        try:
            return _read_checkpoint(path, step)
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(
                f"Skipping the unusable checkpoint {path}: {error}. Falling back "
                "to the previous checkpoint.",
                stacklevel=2,
            )
    return None


def fit_resumable(
    model,
    make_dataset,
    *,
    epochs,
    steps_per_epoch,
    directory,
    save_every_steps,
    per_epoch=False,
    keep=2,
    callbacks=None,
    **fit_kwargs,
):
    """`model.fit` that checkpoints every few steps and resumes exactly.

    If `directory` holds a usable checkpoint, its state is restored and
    training continues from its step: the epoch in progress runs its
    remaining batches, on the data it would have seen, then the remaining
    epochs run. Otherwise training starts from the model as it is.

    The data comes from a function that builds a new `tf.data.Dataset` on
    each call, not from a dataset object: a dataset shuffled with
    `reshuffle_each_iteration=True` (the default) draws a new order every
    time the same object is iterated, so a process that iterates it twice
    (as a resumed one does) would not see the batches of an uninterrupted
    run. Each call must give the same batches: fixed shuffle seeds, and the
    same global seed (`keras.utils.set_random_seed`) in every run, since
    TensorFlow pairs it with each op's seed.

    - `per_epoch=False`: `make_dataset()` is one stream read across all
      epochs, as `model.fit(dataset.repeat(), steps_per_epoch=...)` reads
      it; a run resumed at global step `k` reads `make_dataset().skip(k)`
      (skipping runs the input pipeline over those batches, without
      training).
    - `per_epoch=True`: `make_dataset(epoch)` is that epoch's dataset
      (shuffle it with a seed derived from the epoch), of at least
      `steps_per_epoch` batches; a resumed epoch reads
      `make_dataset(epoch).skip(step_in_epoch)`.

    An epoch resumed halfway is run by a `fit` call of its own, so callbacks
    see `on_train_begin`/`on_train_end` once more and the progress bar counts
    only its remaining steps. When every step is done, the final state is
    checkpointed, so running the same command again only restores it.

    Args:
        model: a compiled `keras.Model`.
        make_dataset: callable returning a new `tf.data.Dataset` of
            `(inputs, targets)` batches: `make_dataset()`, or
            `make_dataset(epoch)` with `per_epoch=True`.
        epochs: int. Total epochs, counting those done before a restart.
        steps_per_epoch: int. Batches per epoch; must match the checkpoint's.
        directory: str or path. Where the `ckpt-<step>` folders go.
        save_every_steps: int. Checkpoint every this many steps (a save due
            at the last step of an epoch waits for its validation).
        per_epoch: bool. Whether `make_dataset` takes the epoch and gives
            that epoch's dataset.
        keep: int. Checkpoints kept, newest first; 2 (the default) keeps the
            previous one to fall back to if the newest is damaged.
        callbacks: list of `keras.callbacks.Callback`, passed to `fit`.
        **fit_kwargs: any other `model.fit` argument (`validation_data`,
            `verbose`, ...), except `x`, `y` and `initial_epoch`.

    Returns:
        A `keras.callbacks.History` whose `history` holds every completed
        epoch of the run, including those before a restart.

    Raises:
        ValueError: an invalid argument; a checkpoint written with another
            `steps_per_epoch`; a model whose variables do not match the
            checkpoint's; workers of a multi-worker run that found different
            checkpoints.
        keras_transformer.distribute.WorkerLostError: another worker of a
            multi-worker run was lost; the message names the checkpoint
            that rerunning every worker resumes from.

    Example:

    ```python
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    model = ...  # built and compiled

    def make_dataset():
        return pairs.shuffle(10000, seed=0).repeat().batch(32)

    fit_resumable(
        model, make_dataset, epochs=10, steps_per_epoch=300,
        directory="checkpoints", save_every_steps=100,
    )
    ```
    """
    check_non_negative_int("epochs", epochs)
    check_positive_int("steps_per_epoch", steps_per_epoch)
    check_positive_int("save_every_steps", save_every_steps)
    check_positive_int("keep", keep)
    if not callable(make_dataset):
        raise ValueError(
            "Received an invalid value for argument make_dataset, expected a "
            "function that builds a new tf.data.Dataset (a dataset object "
            "reshuffles every time it is iterated, so a resumed run would see "
            "other batches; pass e.g. `lambda: build_dataset()`). Received: "
            f"make_dataset={make_dataset!r}"
        )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "fit_resumable needs a compiled model: call model.compile() first."
        )
    reserved = sorted(set(fit_kwargs) & set(_RESERVED_FIT_ARGUMENTS))
    if reserved:
        raise ValueError(
            f"fit_resumable chooses {', '.join(reserved)} itself (the data and "
            "the epoch to resume from); pass the data as `make_dataset`. "
            "Received: "
            f"{', '.join(f'{name}={fit_kwargs[name]!r}' for name in reserved)}"
        )
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            "Received an invalid value for argument directory, expected a folder "
            "for the checkpoints (it need not exist yet), not a file. Received: "
            f"directory={directory!r}"
        )
    newer = _newer_format_folders(directory)
    if newer:
        path, found = newer[-1]
        raise ValueError(
            f"The checkpoint {path} was written in checkpoint format {found} by a "
            "newer keras_transformer; this version reads format "
            f"{FORMAT_VERSION}. Upgrade keras_transformer to resume it, or train "
            "into another directory (nothing was changed in this one)."
        )
    strategy = model.distribute_strategy
    writes = distribute.is_chief(strategy)
    if writes:
        os.makedirs(directory, exist_ok=True)
        _remove_leftovers(directory)
    with distribute.explain_lost_worker(
        strategy, functools.partial(_resume_advice, directory)
    ):
        return _fit_resumable(
            model,
            make_dataset,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            directory=directory,
            per_epoch=per_epoch,
            callbacks=callbacks,
            saver=_CheckpointSaver(
                directory, save_every_steps, steps_per_epoch, epochs, keep, writes
            ),
            fit_kwargs=fit_kwargs,
        )


def _fit_resumable(
    model,
    make_dataset,
    *,
    epochs,
    steps_per_epoch,
    directory,
    per_epoch,
    callbacks,
    saver,
    fit_kwargs,
):
    checkpoint = latest_checkpoint(directory)
    _check_workers_agree(model.distribute_strategy, directory, checkpoint)
    epoch, step_in_epoch = 0, 0
    if checkpoint is not None:
        if checkpoint.steps_per_epoch != steps_per_epoch:
            raise ValueError(
                f"The checkpoint {checkpoint.path} was written with "
                f"steps_per_epoch={checkpoint.steps_per_epoch}, so its data "
                "position means nothing with "
                f"steps_per_epoch={steps_per_epoch}. Resume with the same "
                "steps_per_epoch, or train into a new directory."
            )
        checkpoint.restore(model)
        saver.resume_from(checkpoint)
        epoch, step_in_epoch = checkpoint.epoch, checkpoint.step_in_epoch
        if fit_kwargs.get("verbose", "auto") != 0:
            print(
                f"Resuming from {checkpoint.path}: step {checkpoint.step}, "
                f"{step_in_epoch} of {steps_per_epoch} steps into epoch "
                f"{epoch + 1}/{epochs}."
            )

    def batches(first_epoch, skipped, end_epoch):
        """A new dataset of the batches from (first_epoch, skipped) on."""
        if not per_epoch:
            return _checked(make_dataset()).skip(
                first_epoch * steps_per_epoch + skipped
            )
        datasets = [
            _checked(make_dataset(index)).take(steps_per_epoch)
            for index in range(first_epoch, end_epoch)
        ]
        datasets[0] = datasets[0].skip(skipped)
        return functools.reduce(tf.data.Dataset.concatenate, datasets)

    # `make_dataset` shuffles; Keras warns about the default shuffle=True.
    fit_kwargs.setdefault("shuffle", False)
    callbacks = list(callbacks or [])
    # Last, so a save at the end of an epoch sees what the other callbacks
    # did in on_epoch_end (a changed learning rate, say).
    callbacks.append(saver)
    if epoch < epochs and step_in_epoch:
        remaining = batches(epoch, step_in_epoch, epoch + 1)
        _build_metrics(model, remaining.element_spec)
        model.fit(
            remaining,
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=steps_per_epoch - step_in_epoch,
            callbacks=callbacks,
            **fit_kwargs,
        )
        epoch, step_in_epoch = epoch + 1, 0
    if epoch < epochs and not model.stop_training:
        remaining = batches(epoch, 0, epochs)
        _build_metrics(model, remaining.element_spec)
        model.fit(
            remaining,
            epochs=epochs,
            initial_epoch=epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            **fit_kwargs,
        )
    return saver.full_history(model)


def _check_workers_agree(strategy, directory, checkpoint):
    """Makes sure every worker resumes from the same step (or all start)."""
    step = -1 if checkpoint is None else checkpoint.step
    steps = distribute.gather_from_workers(strategy, step)
    if len(set(steps)) > 1:
        found = ", ".join(
            f"process {index}: {'none' if value < 0 else f'ckpt-{value}'}"
            for index, value in enumerate(steps)
        )
        raise ValueError(
            f"The workers found different checkpoints in {directory} ({found}). "
            "Every worker reads the checkpoints the chief writes: on several "
            "machines, put the directory on a file system they all mount "
            "(NFS, say)."
        )


def _resume_advice(directory):
    with warnings.catch_warnings():
        # latest_checkpoint already warned about damaged ones at the start.
        warnings.simplefilter("ignore")
        checkpoint = latest_checkpoint(directory)
    if checkpoint is None:
        return (
            f"No checkpoint was completed in {directory} yet: starting every "
            "worker again with the same command starts the training over."
        )
    return (
        f"The last complete checkpoint is {checkpoint.path} (step "
        f"{checkpoint.step}): start every worker again with the same command "
        "to resume from it."
    )


def _build_metrics(model, element_spec):
    """Creates the compiled metrics' variables before `fit` starts.

    Keras creates them when it first traces the train step, after
    `on_epoch_begin`, where the totals of the epoch being resumed must go.
    Under a strategy, Keras' `fit` would otherwise start an iteration of the
    dataset only to build them, and with the model built the patched `fit`
    (`distribute.patch_distributed_fit`) starts none: an extra iteration
    moves a reshuffling dataset on to other orders.
    """
    with model.distribute_strategy.scope():
        _compat.build_compiled_metrics(model, element_spec)


def _checked(dataset):
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "make_dataset must return a tf.data.Dataset. Received: "
            f"{dataset!r} of type {type(dataset).__name__}"
        )
    return dataset


class _CheckpointSaver(keras.callbacks.Callback):
    """Tracks the position in training and writes checkpoints on schedule."""

    def __init__(
        self, directory, save_every_steps, steps_per_epoch, epochs, keep, writes
    ):
        super().__init__()
        self.directory = directory
        # False on the workers of a multi-worker run other than the chief.
        self.writes = writes
        self.save_every_steps = save_every_steps
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.keep = keep
        self._epoch = 0
        self._step_in_epoch = 0
        self._saved_step = 0
        self._history = {}
        # Set while resuming; the metric totals go in after fit resets them.
        self._resume_epoch = None
        self._resume_step_in_epoch = 0
        self._resume_metrics = None
        self._save_at_epoch_end = False

    def resume_from(self, checkpoint):
        self._epoch = checkpoint.epoch
        self._step_in_epoch = checkpoint.step_in_epoch
        self._saved_step = checkpoint.step
        self._history = {
            name: list(values) for name, values in checkpoint.history.items()
        }
        self._resume_epoch = checkpoint.epoch
        self._resume_step_in_epoch = checkpoint.step_in_epoch
        if checkpoint.step_in_epoch:
            self._resume_metrics = checkpoint

    @property
    def _step(self):
        return self._epoch * self.steps_per_epoch + self._step_in_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._step_in_epoch = 0
        if epoch == self._resume_epoch:
            self._step_in_epoch = self._resume_step_in_epoch
            if self._resume_metrics is not None:
                _assign_groups(
                    self._resume_metrics, {"metrics": self.model.metrics_variables}
                )
                self._resume_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        start = self._resume_step_in_epoch if self._epoch == self._resume_epoch else 0
        self._step_in_epoch = start + batch + 1
        due = (
            self._step // self.save_every_steps
            > self._saved_step // self.save_every_steps
        )
        if not due:
            return
        if self._step_in_epoch < self.steps_per_epoch:
            self._save()
        else:
            self._save_at_epoch_end = True

    def on_epoch_end(self, epoch, logs=None):
        if self._step_in_epoch < self.steps_per_epoch:
            # Stopped mid-epoch (stop_training); the epoch is not complete.
            return
        for name, value in (logs or {}).items():
            self._history.setdefault(name, []).append(float(value))
        self._epoch, self._step_in_epoch = epoch + 1, 0
        if self._save_at_epoch_end:
            self._save_at_epoch_end = False
            self._save()

    def on_train_end(self, logs=None):
        # The end of the run, not of the fit call that finishes a resumed
        # epoch; a run stopped early is saved where it stopped.
        finished = self._step >= self.total_steps or self.model.stop_training
        if finished and self._step > self._saved_step:
            self._save()

    def full_history(self, model):
        history = keras.callbacks.History()
        history.set_model(model)
        history.history = {name: list(values) for name, values in self._history.items()}
        completed = max((len(values) for values in self._history.values()), default=0)
        history.epoch = list(range(completed))
        return history

    def _save(self):
        model = self.model
        groups = {
            "model": model.variables,
            "optimizer": model.optimizer.variables,
            "metrics": model.metrics_variables,
            "global_seed_generator": _global_seed_generator_variables(),
        }
        # Every worker reads the values: reading a metric total sums it over
        # all replicas, a collective that needs every worker.
        arrays = {
            f"{group}/{index}": variable.numpy()
            for group, variables in groups.items()
            for index, variable in enumerate(variables)
        }
        if self.writes:
            position = {
                "step": self._step,
                "epoch": self._epoch,
                "step_in_epoch": self._step_in_epoch,
                "steps_per_epoch": self.steps_per_epoch,
            }
            _write_checkpoint(
                self.directory, groups, arrays, position, self._history, self.keep
            )
        self._saved_step = self._step


def _global_seed_generator_variables():
    generator = _compat.global_seed_generator()
    return [] if generator is None else [generator.state]


def _assign_groups(checkpoint, groups):
    """Assigns {group: variables} from `checkpoint`, all or none of them."""
    for group, variables in groups.items():
        _check_group(checkpoint, group, variables)
    assignments = [
        (variable, checkpoint._arrays[f"{group}/{index}"])
        for group, variables in groups.items()
        for index, variable in enumerate(variables)
    ]
    previous = [np.array(variable.numpy()) for variable, _ in assignments]
    try:
        for variable, value in assignments:
            variable.assign(value)
    except Exception:
        for (variable, _), value in zip(assignments, previous, strict=True):
            variable.assign(value)
        raise


def _check_group(checkpoint, group, variables):
    saved = checkpoint._manifest["variables"][group]
    if len(saved) != len(variables):
        raise ValueError(
            f"The checkpoint {checkpoint.path} holds {len(saved)} {group} "
            f"variables but the model has {len(variables)}: it was written for "
            "a different model or optimizer. Train into a new directory, or "
            "rebuild the model that wrote it."
        )
    for index, ((path, shape, dtype), variable) in enumerate(
        zip(saved, variables, strict=True)
    ):
        if tuple(shape) != tuple(variable.shape) or dtype != variable.dtype:
            raise ValueError(
                f"The checkpoint {checkpoint.path} does not fit this model: "
                f"{group} variable {index} was {path!r} of shape {tuple(shape)} "
                f"and dtype {dtype}, the model's is {variable.path!r} of shape "
                f"{tuple(variable.shape)} and dtype {variable.dtype}. Train into "
                "a new directory, or rebuild the model that wrote it."
            )


def _write_checkpoint(directory, groups, arrays, position, history, keep):
    step = position["step"]
    staging = os.path.join(directory, f".tmp-ckpt-{step}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    arrays = dict(arrays)
    algorithm, keys, numpy_position, has_gauss, cached_gaussian = np.random.get_state()
    arrays["numpy_random/keys"] = keys
    state_path = os.path.join(staging, STATE_FILE)
    _write_state(state_path, arrays)
    version, internal_state, gauss = random.getstate()
    manifest = {
        "format": FORMAT_VERSION,
        **position,
        "state_sha256": _sha256(state_path),
        "state_bytes": os.path.getsize(state_path),
        "variables": {
            group: [
                [variable.path, list(variable.shape), variable.dtype]
                for variable in variables
            ]
            for group, variables in groups.items()
        },
        "history": history,
        "python_random": [version, list(internal_state), gauss],
        "numpy_random": {
            "algorithm": algorithm,
            "position": int(numpy_position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    manifest[_MANIFEST_CHECKSUM] = _manifest_checksum(manifest)
    _write_bytes(
        os.path.join(staging, MANIFEST_FILE),
        json.dumps(manifest).encode("utf-8"),
    )
    _files.fsync_folder(staging)
    final = os.path.join(directory, f"ckpt-{step}")
    _delete_if_readable(final)
    os.replace(staging, final)
    _files.fsync_folder(directory)
    _prune(directory, step, keep)


def _write_state(path, arrays):
    with _files.durable_open(path) as file:
        np.savez(file, **arrays)


def _write_bytes(path, payload):
    with _files.durable_open(path) as file:
        file.write(payload)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _move_aside_and_delete(path):
    """Deletes a folder so that no half-deleted `ckpt-*` is ever visible."""
    if not os.path.lexists(path):
        return
    parent, name = os.path.split(path)
    doomed = os.path.join(parent, f".old-{name}-{os.getpid()}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def _prune(directory, saved_step, keep):
    # Checkpoints past the one just written belong to a run that was resumed
    # from an earlier one, so they were unusable; the rest keep `keep`.
    folders = _checkpoint_folders(directory)
    stale = [path for step, path in folders if step > saved_step]
    current = [path for step, path in folders if step <= saved_step]
    for path in stale + current[:-keep]:
        _delete_if_readable(path)


def _delete_if_readable(path):
    """Deletes a checkpoint folder whose manifest this version reads; sets
    any other aside under a new name, so no file it cannot read is lost."""
    if not os.path.lexists(path):
        return
    try:
        _read_manifest(path, int(_CHECKPOINT_NAME.match(os.path.basename(path))[1]))
    except (OSError, ValueError) as error:
        parent, name = os.path.split(path)
        kept = os.path.join(parent, f"{_UNREADABLE_PREFIX}{name}")
        suffix = 1
        while os.path.lexists(kept):
            kept = os.path.join(parent, f"{_UNREADABLE_PREFIX}{name}-{suffix}")
            suffix += 1
        os.replace(path, kept)
        warnings.warn(
            f"Kept the unreadable checkpoint {path} as {kept} instead of deleting "
            f"it ({error}); delete it yourself once you no longer need it.",
            stacklevel=2,
        )
        return
    _move_aside_and_delete(path)


def _newer_format_folders(directory):
    """(path, format) of the checkpoints a newer version of the library wrote."""
    newer = []
    for _, path in _checkpoint_folders(directory):
        try:
            with open(os.path.join(path, MANIFEST_FILE), "rb") as file:
                found = json.loads(file.read().decode("utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, int) and found > FORMAT_VERSION:
            newer.append((path, found))
    return newer


def _remove_leftovers(directory):
    for name in os.listdir(directory):
        if _LEFTOVER_NAME.match(name):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _checkpoint_folders(directory):
    """(step, path) of the `ckpt-<step>` folders, by increasing step."""
    if not os.path.isdir(directory):
        return []
    folders = []
    for name in os.listdir(directory):
        match = _CHECKPOINT_NAME.match(name)
        path = os.path.join(directory, name)
        if match and os.path.isdir(path):
            folders.append((int(match.group(1)), path))
    return sorted(folders)


def _manifest_checksum(manifest):
    body = {key: value for key, value in manifest.items() if key != _MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _read_manifest(path, step):
    """The folder's manifest, parsed and checked against its own checksum."""
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
        raise ValueError(f"no {MANIFEST_FILE} (the write never finished)")
    with open(manifest_path, "rb") as file:
        try:
            manifest = json.loads(file.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{MANIFEST_FILE} does not parse ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(
            f"{MANIFEST_FILE} is not a format {FORMAT_VERSION} manifest "
            f"(format {found!r}: {_FORMAT_ADVICE})"
        )
    if manifest.get(_MANIFEST_CHECKSUM) != _manifest_checksum(manifest):
        raise ValueError(
            f"{MANIFEST_FILE} does not match its SHA-256 checksum (edited or damaged)"
        )
    if manifest["step"] != step:
        raise ValueError(
            f"{MANIFEST_FILE} says step {manifest['step']}, the folder name {step}"
        )
    return manifest


_FORMAT_ADVICE = (
    "written by another version of keras_transformer; resume it with that "
    "version"
)


def _read_checkpoint(path, step):
    manifest = _read_manifest(path, step)
    state_path = os.path.join(path, STATE_FILE)
    size = os.path.getsize(state_path)
    if size != manifest["state_bytes"]:
        raise ValueError(
            f"{STATE_FILE} has {size} bytes, {manifest['state_bytes']} were written"
        )
    if _sha256(state_path) != manifest["state_sha256"]:
        raise ValueError(f"{STATE_FILE} does not match its SHA-256 checksum")
    with np.load(state_path, allow_pickle=False) as state:
        arrays = {name: state[name] for name in state.files}
    expected = ["numpy_random/keys"] + [
        f"{group}/{index}"
        for group in _GROUPS
        for index in range(len(manifest["variables"][group]))
    ]
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise ValueError(f"{STATE_FILE} lacks the arrays {missing}")
    return Checkpoint(
        path=path,
        step=step,
        epoch=manifest["epoch"],
        step_in_epoch=manifest["step_in_epoch"],
        steps_per_epoch=manifest["steps_per_epoch"],
        history=manifest["history"],
        _manifest=manifest,
        _arrays=arrays,
    )
