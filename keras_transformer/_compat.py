"""Every use of Keras' and TensorFlow's private internals, and every patch.

A Keras or TensorFlow upgrade breaks the package here or nowhere: this is
the only module that imports `keras.src`, `tensorflow.python` or
`tensorflow.compiler`, reads a private attribute of a Keras object, or
replaces a Keras function. Each entry says why no public API serves, the
version it was checked against (Keras 3.15.1, TensorFlow 2.21.0) and the
upstream issue where there is one.

The layers import this module and must run on JAX and PyTorch without
TensorFlow installed, so nothing here imports TensorFlow (or Keras'
TensorFlow backend) at module level: those imports sit in the functions
that need them, which only TensorFlow-bound modules call.
"""

import contextlib
import functools
import inspect
import warnings

# Keras exports `keras.SymbolicScope` but not the query "am I inside one?",
# which tells a placeholder dimension (PyTorch fills unknown lengths with 83,
# then 89, while inferring shapes) from a real one. No upstream issue.
from keras.src.backend.common.symbolic_scope import in_symbolic_scope  # noqa: F401

# Keras exports no setter for the mask a loss hands to its reduction; this
# is the function Keras' own `ignore_class` losses use. No upstream issue.
from keras.src.backend import set_keras_mask  # noqa: F401

from keras.src.backend.common import global_state as _global_state
from keras.src.random import seed_generator as _seed_generator


# Keras' global SeedGenerator -------------------------------------------------
# The generator behind `keras.random` calls without a seed lives in Keras'
# private global state; a checkpoint must save and restore it for a resumed
# run to draw the same numbers. No public accessor (Keras 3.15).


def global_seed_generator(create=False):
    """Keras' global `SeedGenerator`, or None while none exists yet.

    Args:
        create: bool. Whether to create it (as Keras' first unseeded
            `keras.random` call would) when it does not exist.
    """
    if create:
        return _seed_generator.global_seed_generator()
    return _global_state.get_global_attribute(_seed_generator.GLOBAL_SEED_GENERATOR)


def clear_global_seed_generator():
    """Forgets Keras' global `SeedGenerator`; the next use makes a new one."""
    _global_state.set_global_attribute(_seed_generator.GLOBAL_SEED_GENERATOR, None)


# The `(2,)` seed tensor a `keras.random` call takes from its `seed` argument
# (an int, a `SeedGenerator`, which it advances, or None for the global
# generator): what `layers.dropout`'s hashed mask is keyed by, drawn as
# Keras' own random ops draw it. Keras exports no such function (3.15).
draw_seed = _seed_generator.draw_seed


# Layer internals -------------------------------------------------------------


def child_layers(layer, recursive=False):
    """The layers `layer` tracks as attributes (itself excluded).

    `Layer._flatten_layers` is how Keras itself walks a layer tree; the
    public `Model.layers` exists on models only, not on layers such as the
    Transformer blocks. Keras 3.15.
    """
    return layer._flatten_layers(include_self=False, recursive=recursive)


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Lets `layer.add_weight` run after `build`, meanwhile.

    A built layer's tracker refuses new variables; Keras' own
    `Dense.enable_lora` unlocks `_tracker` the same way. Keras 3.15.
    """
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def build_compiled_metrics(model, element_spec):
    """Builds `model` with its compiled loss and metrics from shapes alone.

    Keras builds them when it first traces the train step (after
    `on_epoch_begin`, too late for a resumed epoch's totals) or, under a
    strategy, from a batch it draws for the purpose. `_symbolic_build` is
    how Keras itself does it, and needs only shapes and dtypes, which a
    `tf.TensorSpec` structure has. No public API. Keras 3.15.
    """
    model._symbolic_build(data_batch=element_spec)


def learning_rate_schedule(optimizer):
    """The `LearningRateSchedule` an optimizer was given, or None.

    The public `optimizer.learning_rate` is the schedule's current value;
    Keras keeps the schedule object only in `_learning_rate`. A
    `LossScaleOptimizer` (mixed float16) holds the optimizer that has it.
    Keras 3.15.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return getattr(inner, "_learning_rate", None)


# TensorFlow's coordination service -------------------------------------------
# `tf.distribute.MultiWorkerMirroredStrategy` configures the coordination
# service with TensorFlow's defaults when nothing has yet; setting the
# heartbeat timeout, and a barrier across workers, have no public API
# (TensorFlow 2.21).


def coordination_service_configured():
    """Whether this process's TensorFlow coordination service is set up."""
    from tensorflow.python.eager import context

    return context.context().coordination_service is not None


def configure_coordination_service(cluster_spec, jobs, heartbeat_timeout_seconds):
    """Configures the service as the strategy would, with the given timeout.

    A standalone service on the coordination leader (the chief, or worker
    0) coordinating the tasks of `jobs` present in `cluster_spec`.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        heartbeat_timeout_in_ms=heartbeat_timeout_seconds * 1000,
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(
                name=job, num_tasks=cluster_spec.num_tasks(job)
            )
            for job in jobs
            if job in cluster_spec.jobs
        ],
    )


def wait_at_barrier(name, timeout_seconds):
    """Blocks until every task reaches the barrier `name` (or fails)."""
    from tensorflow.python.eager import context

    context.context().wait_at_barrier(name, timeout_seconds * 1000)


# The patch of Keras' fit under tf.distribute (keras#20585) -------------------
# Two functions of `keras/src/backend/tensorflow/trainer.py` fail:
#
# 1. `TensorFlowTrainer._maybe_symbolic_build` takes one distributed batch
#    before `fit` and `evaluate` start and calls `strategy.reduce("MEAN",
#    batch, axis=None)` on it, only to learn the shapes and dtypes to build
#    the model from. Averaging token ids across replicas was never
#    meaningful, and it breaks twice: under `MultiWorkerMirroredStrategy`
#    with more than one worker (keras#20585) the collective all-reduce
#    receives the whole `(inputs, labels)` structure and tries to make one
#    tensor of it; under `MirroredStrategy`, a first batch that does not
#    split evenly among the replicas cannot be averaged element-wise
#    (`InvalidArgumentError: Inputs to operation AddN ... same size`). The
#    patch builds from the first replica's local batch, with no
#    communication, and draws no batch at all once the model, its compiled
#    loss and metrics are built: each draw starts an iteration of the
#    dataset, which moves a reshuffling dataset on to its next orders, so a
#    resumed `fit` would read other batches than the run it continues.
# 2. `reduce_per_replica` averages each step's logs with
#    `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode, which fails
#    on a scalar (keras#20585 via tensorflow#72388). The patch averages
#    with `axis=None` there, as Keras does on one worker.
#
# Verified on Keras 3.15.1 with TensorFlow 2.21.0. Remove it once Keras no
# longer reduces the data batch nor the logs with `axis=0`; until then
# `patch_distributed_fit` reads Keras' source and leaves alone, with a
# warning, a function in which the failing call is gone.

_PATCH_MARKER = "_keras_transformer_distributed_fit_patch"


def patch_distributed_fit():
    """Fixes Keras 3 `fit`/`evaluate` under tf.distribute strategies.

    Wraps Keras' `_maybe_symbolic_build`, which then builds the model from
    the first replica's local batch under any strategy, and
    `reduce_per_replica`, which then averages the logs with `axis=None` in
    multi-worker mode (keras#20585). Everything else (and everything
    without a strategy) runs Keras' own code. Calling it again does nothing.
    A function whose Keras source no longer has the bug is left alone, with
    a warning that the patch can go.

    Returns:
        tuple of str, the Keras functions now patched (both, while Keras
        still has the bugs).
    """
    from keras.src.backend.tensorflow import trainer

    fixes = (
        (
            trainer.TensorFlowTrainer,
            "_maybe_symbolic_build",
            "self.distribute_strategy.reduce(",
            _build_from_local_batch,
        ),
        (
            trainer,
            "reduce_per_replica",
            'strategy.reduce("MEAN", v, axis=0)',
            functools.partial(_mean_across_replicas, trainer),
        ),
    )
    patched = []
    for owner, name, bug, make_wrapper in fixes:
        original = getattr(owner, name)
        if not getattr(original, _PATCH_MARKER, False):
            if not _still_has(original, bug):
                warnings.warn(
                    f"keras_transformer.distribute.patch_distributed_fit: "
                    f"{original.__qualname__} in this Keras no longer contains "
                    f"{bug!r} (keras#20585 looks fixed), so it is not patched; "
                    "remove the patch.",
                    stacklevel=2,
                )
                continue
            wrapper = functools.wraps(original)(make_wrapper(original))
            setattr(wrapper, _PATCH_MARKER, True)
            setattr(owner, name, wrapper)
        patched.append(original.__qualname__)
    return tuple(patched)


def _build_from_local_batch(original):
    import tensorflow as tf

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or self._distribute_strategy is None:
            return original(self, iterator=iterator, data_batch=data_batch)
        if not _needs_a_batch_to_build(self):
            return original(self)
        strategy = self._distribute_strategy
        for _, _, distributed_iterator in iterator:
            data_batch = tf.nest.map_structure(
                lambda value: strategy.experimental_local_results(value)[0],
                next(distributed_iterator),
            )
            break
        return original(self, data_batch=data_batch)

    return _maybe_symbolic_build


def _needs_a_batch_to_build(model):
    """Whether Keras' `_symbolic_build` would read a batch (its own test)."""
    return (
        not all(layer.built for layer in model._flatten_layers())
        or (model._compile_metrics is not None and not model._compile_metrics.built)
        or (model._compile_loss is not None and not model._compile_loss.built)
    )


def _mean_across_replicas(trainer, original):
    import tensorflow as tf

    def reduce_per_replica(values, strategy, reduction):
        # "auto" is "mean" for every strategy but TPU. Keras' own test for
        # its (broken) multi-worker branch:
        multi_worker = trainer._collective_all_reduce_multi_worker(strategy)
        if reduction not in ("auto", "mean") or not multi_worker:
            return original(values, strategy, reduction)
        return tf.nest.map_structure(
            lambda value: strategy.reduce("MEAN", value, axis=None), values
        )

    return reduce_per_replica


def _still_has(function, bug):
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        # Without the source (a stripped install) the bug cannot be ruled
        # out; the patch only replaces the calls that fail.
        return True
    return bug in source
