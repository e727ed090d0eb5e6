"""Keras callbacks of the training recipe for real corpora.

`BleuEvaluation` scores translations of held-out texts with sacreBLEU during
`fit` and logs the score into the epoch's `logs` (so `History`, TensorBoard
and `EarlyStopping` see it); `CheckpointAveraging` keeps the weights of the
last few epochs (or of snapshots every N steps) and leaves the model at their
mean when training ends, as fairseq's `average_checkpoints.py` does with
saved files; `average_weights` is that mean. `TrainingSpeed` logs tokens per
second and compile time; `TimeBudget` ends training after a wall-clock budget
and fits the learning-rate schedule to the steps that budget holds.
"""

import collections.abc
import time

import keras
import numpy as np

from keras_transformer import evaluation
from keras_transformer.validation import (
    check_bool,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)


class BleuEvaluation(keras.callbacks.Callback):
    """Logs corpus BLEU (sacreBLEU, 13a) of held-out translations.

    Every `every_n_epochs` epochs (and after the last one), `decode_fn`
    translates `sources` and the BLEU of the result against `references` is
    written into the epoch's `logs` under `name`, where callbacks later in
    the list (`History`, `ProgbarLogger`, `TensorBoard`, `EarlyStopping`,
    `ModelCheckpoint(monitor=name)`) find it. As with Keras's
    `validation_freq`, epochs without an evaluation have no such entry, so
    `history.history[name]` has one value per evaluation; `scores` pairs
    each with its epoch and the training time before it.

    Args:
        decode_fn: callable taking a list of str and returning a list of str
            of the same length: the model's translations, e.g.
            `lambda texts: translator.translate(texts, method="beam")`.
        sources: list of str. Held-out source texts.
        references: list of str. Their reference translations.
        every_n_epochs: int. Epochs between evaluations.
        lowercase: bool. Score case-insensitively (sacreBLEU `lowercase`).
        name: str. Key of the score in `logs`.

    Attributes:
        scores: list of dicts `{"epoch", "bleu", "training_seconds",
            "evaluation_seconds"}`, one per evaluation; `epoch` counts from
            1 and `training_seconds` is the wall time spent in `fit` so far,
            the evaluations excluded.

    Example:

    ```python
    bleu = BleuEvaluation(
        lambda texts: translator.translate(texts, method="beam"),
        val_sources, val_targets, every_n_epochs=2,
    )
    history = translator.fit(..., callbacks=[bleu])
    history.history["val_bleu"]
    ```
    """

    def __init__(
        self,
        decode_fn,
        sources,
        references,
        every_n_epochs=1,
        lowercase=False,
        name="val_bleu",
    ):
        super().__init__()
        if not callable(decode_fn):
            raise ValueError(
                "Received an invalid value for argument decode_fn, expected a "
                "callable from a list of texts to a list of translations. "
                f"Received: decode_fn={decode_fn!r}"
            )
        for argument, texts in (("sources", sources), ("references", references)):
            if (
                isinstance(texts, (str, bytes))
                or not isinstance(texts, collections.abc.Iterable)
                or not all(isinstance(text, str) for text in texts)
            ):
                raise ValueError(
                    f"Received an invalid value for argument {argument}, "
                    "expected a list of strings. Received: "
                    f"{argument}={texts!r}"[:300]
                )
        self.sources, self.references = list(sources), list(references)
        if len(self.sources) != len(self.references):
            raise ValueError(
                "sources and references must pair up, but received "
                f"{len(self.sources)} sources and {len(self.references)} "
                "references."
            )
        if not self.sources:
            raise ValueError(
                "Received an invalid value for argument sources, expected at "
                "least one text. Received: sources=[]"
            )
        self.decode_fn = decode_fn
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.lowercase = check_bool("lowercase", lowercase)
        if not isinstance(name, str) or not name:
            raise ValueError(
                "Received an invalid value for argument name, expected a "
                f"non-empty str. Received: name={name!r}"
            )
        self.name = name
        self.scores = []

    def on_train_begin(self, logs=None):
        self.scores = []
        self._started = time.perf_counter()
        self._evaluating_seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        last_epoch = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != last_epoch:
            return
        started = time.perf_counter()
        training_seconds = started - self._started - self._evaluating_seconds
        score = self.evaluate()
        seconds = time.perf_counter() - started
        self._evaluating_seconds += seconds
        self.scores.append(
            {
                "epoch": epoch + 1,
                "bleu": score,
                "training_seconds": training_seconds,
                "evaluation_seconds": seconds,
            }
        )
        if logs is not None:
            logs[self.name] = score

    def evaluate(self):
        """Translates `sources` now and returns their corpus BLEU (float)."""
        hypotheses = list(self.decode_fn(list(self.sources)))
        if len(hypotheses) != len(self.sources) or not all(
            isinstance(text, str) for text in hypotheses
        ):
            raise ValueError(
                f"decode_fn must return {len(self.sources)} strings, one per "
                f"source text; it returned {len(hypotheses)} items: "
                f"{hypotheses[:3]!r}..."
            )
        return float(
            evaluation.corpus_bleu(
                hypotheses, self.references, lowercase=self.lowercase
            ).score
        )


def average_weights(weight_lists):
    """The element-wise mean of several copies of a model's weights.

    Args:
        weight_lists: list of weight lists, each as `model.get_weights()`
            returns it (the same shapes in the same order).

    Returns:
        A list of NumPy arrays: the mean of each floating-point weight,
        accumulated in float64 and cast back to its dtype; integer and
        boolean weights (counters, not parameters) are taken from the last
        list unchanged.

    Example:

    ```python
    snapshots = [model.get_weights() for model in models]
    model.set_weights(average_weights(snapshots))
    ```
    """
    if isinstance(weight_lists, np.ndarray) or not weight_lists:
        raise ValueError(
            "Received an invalid value for argument weight_lists, expected a "
            "non-empty list of weight lists. Received: "
            f"weight_lists={weight_lists!r}"[:300]
        )
    weight_lists = [[np.asarray(w) for w in weights] for weights in weight_lists]
    reference = weight_lists[-1]
    for index, weights in enumerate(weight_lists):
        shapes = [w.shape for w in weights]
        if shapes != [w.shape for w in reference]:
            raise ValueError(
                "Received an invalid value for argument weight_lists, expected "
                "lists of equally shaped weights. Received: weight_lists"
                f"[{index}] has shapes {shapes}, the last list "
                f"{[w.shape for w in reference]}"
            )
    averaged = []
    for position, last in enumerate(reference):
        if np.issubdtype(last.dtype, np.floating):
            total = np.zeros(last.shape, dtype="float64")
            for weights in weight_lists:
                total += weights[position]
            averaged.append((total / len(weight_lists)).astype(last.dtype))
        else:
            averaged.append(last.copy())
    return averaged


class CheckpointAveraging(keras.callbacks.Callback):
    """Leaves the model at the mean of its last `num_checkpoints` snapshots.

    A snapshot of the weights is taken at the end of every epoch, or every
    `every_n_steps` training steps when given; only the last
    `num_checkpoints` are kept, in memory. When training ends the model's
    weights are set to their mean (`average_weights`), which smooths out the
    noise of the last updates: fairseq's recipe averages the last 10 epoch
    checkpoints. Fewer snapshots than `num_checkpoints` (a short run) are
    averaged as they are.

    Snapshots every few steps suit short runs, where the weights of whole
    epochs ago are much worse than the last ones.

    Args:
        num_checkpoints: int. Snapshots averaged.
        every_n_steps: int or None. Steps between snapshots; None takes one
            per epoch.

    Attributes:
        snapshots: the kept weight lists (NumPy), oldest first.

    Example:

    ```python
    averaging = CheckpointAveraging(num_checkpoints=5)
    model.fit(dataset, epochs=20, callbacks=[averaging])
    # The model now holds the mean of the weights after epochs 16-20.
    ```
    """

    def __init__(self, num_checkpoints=5, every_n_steps=None):
        super().__init__()
        self.num_checkpoints = check_positive_int("num_checkpoints", num_checkpoints)
        self.every_n_steps = check_positive_int(
            "every_n_steps", every_n_steps, allow_none=True
        )
        self.snapshots = []

    def on_train_begin(self, logs=None):
        self.snapshots = []
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.every_n_steps and self._steps % self.every_n_steps == 0:
            self._snapshot()

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_steps is None:
            self._snapshot()

    def on_train_end(self, logs=None):
        if self.snapshots:
            self.model.set_weights(average_weights(self.snapshots))

    def _snapshot(self):
        self.snapshots.append(self.model.get_weights())
        del self.snapshots[: -self.num_checkpoints]


# A step this many times slower than the epoch's median step compiled a new
# program (a new batch shape under XLA, or the first trace).
_COMPILE_STEP_FACTOR = 4.0


class TrainingSpeed(keras.callbacks.Callback):
    """Logs tokens per second of training, and the time spent compiling.

    At the end of every epoch it writes into `logs` (so the progress line,
    `History` and TensorBoard show them): `source_tokens_per_second` and
    `target_tokens_per_second`, the epoch's real (non-padding) tokens over
    the wall time of its training steps, validation and other callbacks
    excluded (an epoch cut short counts its share of the tokens, by steps);
    and `compile_seconds`, the time of the epoch's steps that took
    more than 4 times the median step, less a median step each: the first
    trace, and under XLA one compilation per new batch shape.

    Args:
        source_tokens: int. Source tokens in one epoch.
        target_tokens: int. Target tokens in one epoch (the labels: the
            target and its end token).

    Attributes:
        epochs: list of dicts `{"epoch", "training_seconds",
            "compile_seconds", "steps", "source_tokens_per_second",
            "target_tokens_per_second"}`, one per epoch.

    Example:

    ```python
    speed = TrainingSpeed(source_tokens=120_000, target_tokens=130_000)
    model.fit(dataset, epochs=2, callbacks=[speed])
    speed.epochs[-1]["target_tokens_per_second"]
    ```
    """

    def __init__(self, source_tokens, target_tokens):
        super().__init__()
        self.source_tokens = check_positive_int("source_tokens", source_tokens)
        self.target_tokens = check_positive_int("target_tokens", target_tokens)
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self._step_ends = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        self._step_ends.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        steps = np.diff(self._step_ends)
        if not len(steps):
            return
        seconds = float(steps.sum())
        median = float(np.median(steps))
        slow = steps[steps > _COMPILE_STEP_FACTOR * median]
        # An epoch cut short (a time budget, early stopping) saw that share
        # of the epoch's tokens.
        share = min(1.0, len(steps) / (self.params.get("steps") or len(steps)))
        record = {
            "epoch": epoch + 1,
            "training_seconds": seconds,
            "compile_seconds": float((slow - median).sum()),
            "steps": len(steps),
            "source_tokens_per_second": share * self.source_tokens / seconds,
            "target_tokens_per_second": share * self.target_tokens / seconds,
        }
        self.epochs.append(record)
        if logs is not None:
            for key in (
                "source_tokens_per_second",
                "target_tokens_per_second",
                "compile_seconds",
            ):
                logs[key] = record[key]


# How often `TimeBudget` re-estimates the run's length: often enough that the
# schedule follows a change of speed, rarely enough to cost nothing.
_ESTIMATE_EVERY_N_STEPS = 10
# Its first estimate: after enough steps that those which compiled a program
# (one per batch shape under XLA, most of them among the first steps) are a
# minority the median sees past. An estimate made of compilations would make
# the run look short, end the warm-up at once and train at the peak rate
# too early.
_FIRST_ESTIMATE_AT_STEP = 30
# The steps a speed estimate reads: the recent ones, so a machine that slows
# down (or speeds up) is followed within a minute or so.
_SPEED_WINDOW = 200


class TimeBudget(keras.callbacks.Callback):
    """Trains for a wall-clock budget, the learning rate fitted to it.

    The budget is wall time from `started_at` (default: when training
    begins) to the end of `fit`, everything included: the training steps
    and their compilation, validation and other work at the end of each
    epoch. Training stops (`model.stop_training`) after the last step after
    which `fit` can still return within the budget: one more step would
    cost the step and its epoch's end (validation runs once more when
    training stops mid-epoch), at the recent time per step and the mean
    time between epochs measured so far.

    With a `schedule` (a `schedules.WarmupCosineDecay`), the run's length in
    steps is estimated every 10 steps from the 30th on: the steps done,
    plus those the remaining time holds at the recent time per step (steps
    slower than 4 times the median, which compiled a program, left out)
    once the time between epochs (measured from the epochs ended so far,
    spread over their steps) and the last epoch's end are set aside. The
    schedule is set to it: its warm-up stays a fraction of the run and its
    cosine reaches 0 as the budget ends, whatever the corpus, the machine or
    its load. Until the first estimate the schedule keeps the run it was
    given (`Translator.fit` gives it one long enough that the rate stays
    near 0 for those steps).

    Args:
        seconds: float. The wall-clock budget.
        schedule: `schedules.WarmupCosineDecay` or None. The schedule to fit
            to the run (its `set_run` is called); None only stops training.
        clock: callable returning seconds (default `time.perf_counter`).
        started_at: float >= 0 or None. The `clock` reading the budget counts
            from (`Translator.fit` passes its own start, so tokenizing the
            texts counts too); None: the start of training.

    Attributes:
        elapsed: wall seconds spent so far.
        steps: training steps done so far.
        epoch_end_seconds: the mean wall time between an epoch's last step
            and the next epoch's first (validation, callbacks); 0 until an
            epoch has ended.

    Example:

    ```python
    schedule = WarmupCosineDecay(5e-3)
    model.compile(keras.optimizers.Adam(schedule), loss=...)
    model.fit(dataset, epochs=1000, validation_data=held_out,
              callbacks=[TimeBudget(30 * 60, schedule)])  # half an hour
    ```
    """

    def __init__(self, seconds, schedule=None, clock=time.perf_counter, started_at=None):
        super().__init__()
        self.seconds = check_positive_float("seconds", seconds)
        if schedule is not None and not callable(getattr(schedule, "set_run", None)):
            raise ValueError(
                "Received an invalid value for argument schedule, expected a "
                "schedules.WarmupCosineDecay (a schedule with set_run) or None. "
                f"Received: schedule={schedule!r}"
            )
        if schedule is not None and keras.backend.backend() != "tensorflow":
            raise ValueError(
                "TimeBudget fits a schedule only on the TensorFlow backend, "
                "where the schedule's run is a variable the compiled step "
                "reads (elsewhere it is a constant of the traced step). "
                f"Received: schedule={schedule!r} on the "
                f"{keras.backend.backend()} backend. Pass schedule=None to "
                "only stop at the budget."
            )
        if not callable(clock):
            raise ValueError(
                "Received an invalid value for argument clock, expected a "
                f"callable returning seconds. Received: clock={clock!r}"
            )
        self.schedule = schedule
        self.clock = clock
        if started_at is not None:
            started_at = check_non_negative_float("started_at", started_at)
        self.started_at = started_at
        self.elapsed = 0.0
        self.steps = 0
        # Wall seconds between epochs (see `epoch_end_seconds`).
        self._epoch_ends = []

    def on_train_begin(self, logs=None):
        self._start = self.clock() if self.started_at is None else self.started_at
        self.elapsed = 0.0
        self.steps = 0
        # (seconds, steps) of the recent calls of on_train_batch_end: one
        # call covers `steps_per_execution` steps.
        self._recent = collections.deque(maxlen=_SPEED_WINDOW)
        self._first_step = self._optimizer_step()
        self._estimated_at = _FIRST_ESTIMATE_AT_STEP - _ESTIMATE_EVERY_N_STEPS
        self._epoch_ends = []
        # The steps of the epochs ended.
        self._steps_of_ended_epochs = 0
        self._last = None
        self._epoch_begun = False

    def _optimizer_step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    @property
    def epoch_end_seconds(self):
        """The mean wall time between an epoch's last step and the next
        epoch's first (validation, callbacks); 0 until an epoch has ended."""
        return float(np.mean(self._epoch_ends)) if self._epoch_ends else 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_begun = True

    def on_train_batch_begin(self, batch, logs=None):
        now = self.clock()
        if self._epoch_begun and self._last is not None:
            # The first step of an epoch after the first: the time since
            # the last one's last step went to its end (validation).
            self._epoch_ends.append(now - self._last)
            self._steps_of_ended_epochs = self.steps
        self._epoch_begun = False
        self._last = now

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        steps = self._optimizer_step() - self._first_step
        self._recent.append((now - self._last, steps - self.steps))
        self._last = now
        self.steps = steps
        self.elapsed = now - self._start
        if self.elapsed + self._cost_of_one_more_step(batch) > self.seconds:
            self.model.stop_training = True
        elif (
            self.schedule is not None
            and self.steps >= self._estimated_at + _ESTIMATE_EVERY_N_STEPS
        ):
            self._estimated_at = self.steps
            self.schedule.set_run(self.estimated_steps(), self._first_step)

    def on_train_end(self, logs=None):
        self.elapsed = self.clock() - self._start

    def _seconds_per_step(self):
        """The recent time per step, steps that compiled left out."""
        seconds, steps = (np.asarray(column, float) for column in zip(*self._recent))
        per_step = seconds / np.maximum(steps, 1)
        usual = per_step <= _COMPILE_STEP_FACTOR * np.median(per_step)
        return seconds[usual].sum() / max(steps[usual].sum(), 1)

    def _cost_of_one_more_step(self, batch):
        """The time training on after step `batch` adds before `fit` can
        return: a step and the end of its epoch, and, when `batch` ends an
        epoch, that epoch's end first (stopping now ends the epoch anyway)."""
        ends_epoch = batch + 1 >= (self.params.get("steps") or float("inf"))
        epoch_ends = 2 if ends_epoch else 1
        return self._seconds_per_step() + epoch_ends * self.epoch_end_seconds

    def estimated_steps(self):
        """The run's length in steps: those done, plus those the remaining
        budget holds at the recent speed, the time between epochs set
        aside."""
        seconds_per_step = self._seconds_per_step()
        if self._epoch_ends:
            # Each step also brings its epoch's end closer.
            steps_per_epoch = self._steps_of_ended_epochs / len(self._epoch_ends)
            seconds_per_step += self.epoch_end_seconds / steps_per_epoch
        remaining = max(0.0, self.seconds - self.elapsed - self.epoch_end_seconds)
        total = self.steps + int(remaining / seconds_per_step)
        # A fixed warm-up is never shortened: the run holds at least it.
        warmup = self.schedule.warmup_steps or 0
        return max(total, warmup + 1, 1)
