"""The decisions of a Translator's training run.

`Translator.compile` and `Translator.fit` are the entry points; this module
holds what they decide: the recipe's optimizer (`recipe_optimizer`) and
metrics (`default_metrics`), the schedule fitted to the run `fit` makes
(`schedule_following_fit`, `fit_schedule_to_run`, `steps_of_keras_fit`),
whether XLA repays its compilations (`use_xla_for_run`) and the time budget
of `fit(minutes=...)` (`time_budget`).
"""

import math
import time

import keras

from keras_transformer import _compat
from keras_transformer._tensorflow import import_tensorflow
from keras_transformer import callbacks, distribute, metrics, schedules, validation
from keras_transformer.data import packing, pipeline

tf = import_tensorflow(__name__)

# `compile(jit_compile="auto")` turns XLA on for a `fit` on texts with at
# least this many steps per length bucket: XLA compiles each bucket's shape
# once (about 15 s for the corpus recipe's model on 2 CPU cores) and runs a
# step about 1.3x faster (about 0.1 s saved a step), so a bucket repays its
# compilation after about 150 steps; the rest is margin.
XLA_STEPS_PER_PROGRAM = 300
# The same rule for `fit(minutes=...)`: 300 steps of the corpus recipe take
# about 100 s on 2 CPU cores.
XLA_SECONDS_PER_PROGRAM = 100
# `fit(minutes=...)` without `epochs`: epochs enough for any budget (the
# budget ends the run).
EPOCHS_OF_A_TIME_BUDGET = 10_000


def recipe_optimizer(
    translator, learning_rate, warmup_steps, total_steps, warmup_fraction
):
    """The optimizer of `Translator.compile`'s recipe: Adam on a
    `WarmupCosineDecay`, with loss scaling under a `mixed_float16` policy of
    the layers."""
    if learning_rate is None:
        learning_rate = schedules.default_learning_rate(
            translator.transformer_layers.target_embedding.embedding_dim
        )
    learning_rate = validation.check_positive_float("learning_rate", learning_rate)
    schedule = schedules.WarmupCosineDecay(
        learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        warmup_fraction=(
            schedules.DEFAULT_WARMUP_FRACTION
            if warmup_fraction is None
            else warmup_fraction
        ),
    )
    optimizer = keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
    if layers_policy_name(translator) == "mixed_float16":
        # compile() wraps the optimizer only when the model's own policy
        # is mixed_float16; here only the layers' is.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def default_metrics(padding_id):
    """The metrics of `Translator.compile`'s recipe."""
    return [
        metrics.MaskedAccuracy(padding_id=padding_id),
        metrics.SequenceExactMatch(padding_id=padding_id),
    ]


def schedule_following_fit(optimizer):
    """The `WarmupCosineDecay` of a recipe optimizer whose run `fit` sets, or
    None."""
    schedule = _compat.learning_rate_schedule(optimizer)
    if isinstance(schedule, schedules.WarmupCosineDecay) and schedule.follows_fit:
        return schedule
    return None


def fit_schedule_to_run(translator, steps):
    """Fits a schedule made by `compile(total_steps=None)` to the `steps`
    updates the next `fit` makes, counted from the optimizer's step.

    Raises:
        ValueError: for a translator not yet compiled (it has no optimizer),
            before the data is batched.
    """
    if not translator.compiled:
        raise ValueError(
            "Call compile() before fit: the translator has no optimizer yet. "
            "Received an uncompiled Translator; translator.compile() gives it "
            "the library's recipe (Adam, warm-up and cosine decay, the "
            "masked loss)."
        )
    schedule = schedule_following_fit(translator.optimizer)
    if schedule is None or steps is None:
        return
    first_step = int(keras.ops.convert_to_numpy(translator.optimizer.iterations))
    if (schedule.total_steps, schedule.first_step) != (steps, first_step):
        schedule.set_run(steps, first_step)
        if keras.backend.backend() != "tensorflow":
            # Elsewhere the run's numbers are constants of the traced
            # train step: trace it again.
            translator.train_function = None


def steps_of_keras_fit(x, batch_size, epochs, steps_per_epoch):
    """Updates `keras.Model.fit` will make on ids, or None when unknown."""
    if steps_per_epoch is None:
        if isinstance(x, tf.data.Dataset):
            cardinality = int(x.cardinality())
            if cardinality < 0:
                return None
            steps_per_epoch = cardinality
        elif isinstance(x, keras.utils.PyDataset):
            steps_per_epoch = len(x)
        elif isinstance(x, dict) and x:
            # Arrays: Keras batches them by 32 unless told otherwise.
            rows = len(next(iter(x.values())))
            steps_per_epoch = math.ceil(rows / (batch_size or 32))
        else:
            return None
    return epochs * steps_per_epoch if isinstance(epochs, int) and epochs > 0 else None


def use_xla_for_run(translator, steps, bucket_boundaries, budget=None, pack=False):
    """Under `jit_compile="auto"`, turns XLA on for a run of enough
    `steps` (or, under a time `budget`, of enough seconds) per batch
    shape (packed rows have at most two), unless the model computes in bfloat16 on
    CPUs that multiply it natively; returns whether the run uses XLA (and
    so static shapes)."""
    if not (
        translator._jit_compile_auto
        and keras.backend.backend() == "tensorflow"
        and distribute.jit_compile_works(translator.distribute_strategy)
    ):
        return bool(translator.jit_compile)
    if layers_policy_name(translator) == "mixed_bfloat16" and (
        distribute.trains_on_bfloat16_cpus(translator.distribute_strategy)
    ):
        # oneDNN's bfloat16 kernels, which XLA's CPU programs do not use,
        # run the step faster than XLA does (the corpus recipe's model on
        # packed 28 x 72 rows, 2 AVX512-BF16 cores: 4,803 target tokens/s
        # without XLA, 4,121 with it).
        return bool(translator.jit_compile)
    if pack:
        programs = packing.MAX_ROW_SHAPES
    elif bucket_boundaries is None:
        programs = pipeline.DEFAULT_NUM_BUCKETS
    else:
        programs = len(bucket_boundaries) + 1
    if budget is None:
        repays = steps >= XLA_STEPS_PER_PROGRAM * programs
    else:
        repays = budget.seconds >= XLA_SECONDS_PER_PROGRAM * programs
    use_xla = repays or bool(translator.jit_compile)
    if use_xla != translator.jit_compile:
        translator.jit_compile = use_xla
        translator.train_function = translator.test_function = None
    return use_xla


def time_budget(translator, minutes, checkpoint_dir):
    """The `callbacks.TimeBudget` of `fit(minutes=...)`, or None.

    Called as `fit` begins: the budget counts `fit`'s whole wall time, the
    texts' tokenizing and packing included.
    """
    started_at = time.perf_counter()
    validation.check_positive_float("minutes", minutes, allow_none=True)
    if minutes is None:
        return None
    if checkpoint_dir is not None:
        raise ValueError(
            "minutes and checkpoint_dir exclude each other: a resumed run "
            "cannot know the training time spent before it stopped. "
            f"Received: minutes={minutes}, checkpoint_dir={checkpoint_dir!r}. "
            "Give epochs instead of minutes to checkpoint."
        )
    if distribute.is_multi_worker(translator.distribute_strategy):
        raise ValueError(
            "fit(minutes=...) does not work across workers: each would "
            "read its own clock, stop at its own step and fit its own "
            f"schedule. Received: minutes={minutes} under a multi-worker "
            "strategy. Give epochs instead."
        )
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "fit(minutes=...) fits the schedule to the run as it goes, which "
            "needs the TensorFlow backend (elsewhere the schedule is a "
            "constant of the compiled step). Received: minutes="
            f"{minutes} on the {keras.backend.backend()} backend. Give "
            "epochs instead."
        )
    optimizer = getattr(translator, "optimizer", None)
    return callbacks.TimeBudget(
        60.0 * minutes,
        None if optimizer is None else schedule_following_fit(optimizer),
        started_at=started_at,
    )


def layers_policy_name(translator):
    """The name of the dtype policy `translator`'s layers compute with (the
    global policy when they were built without one)."""
    dtype = translator.backbone.layers_dtype
    if dtype is None:
        return keras.config.dtype_policy().name
    return getattr(dtype, "name", dtype)
