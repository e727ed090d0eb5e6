"""Distribution strategies for `model.fit`: one device, GPUs, workers, TPUs.

`make_strategy(name)` builds the strategy; create the model, the optimizer
and call `compile` inside `strategy.scope()`, feed `fit` a dataset batched to
`global_batch_size(per_replica, strategy)` and passed through
`shard_dataset`, and let only the chief write files (`is_chief`,
`chief_output_dir`):

```python
strategy = distribute.make_strategy("multi-worker")   # reads TF_CONFIG
with strategy.scope():
    model = models.build_transformer(config)
    model.compile(optimizer="adam", loss=loss, jit_compile=True)
batch_size = distribute.global_batch_size(64, strategy)
model.fit(distribute.shard_dataset(make_dataset(batch_size)), ...)
```

Keras 3's `fit` needs a fix under tf.distribute (keras#20585): Keras reduces
the first data batch across replicas only to learn its shapes, which fails
under `MultiWorkerMirroredStrategy` and on batches that do not split evenly,
and draws an extra iteration of the dataset on every `fit`; and it averages
the logs across workers with `axis=0`, which fails on scalars.
`patch_distributed_fit`, applied by `make_strategy` to every strategy but the
default one, fixes both; it lives with the package's other uses of Keras
internals in `keras_transformer._compat`, which says what it changes, why, and
when it can go.

A multi-worker run starts and ends together, and stops together when a
worker is lost:

- `make_strategy("multi-worker")` sets the heartbeat timeout of
  TensorFlow's coordination service (run by the chief, or worker 0): a
  worker whose process dies is noticed at once by the next collective step
  (its connections are reset); one that vanishes silently (a host that loses
  power or its network) is declared dead after `heartbeat_timeout_seconds`
  without heartbeats, and every other worker's collectives are aborted.
- `explain_lost_worker` turns the errors that follow (`UnavailableError`,
  `DeadlineExceededError`, ...) into a `WorkerLostError` that says what
  happened and what to do; `checkpointing.fit_resumable` uses it to name the
  checkpoint the rerun will resume from.
- `finish(strategy)`, the last call of a multi-worker program, waits for
  every worker, then lets the chief exit last. Without it, a worker that
  exits while the others still run looks like a crashed one: the chief logs
  `BaseCollectiveExecutor::StartAbort UNAVAILABLE ... The tasks have
  crashed` once the heartbeat timeout passes, and a worker that outlives the
  chief logs `Failed to send RPC to coordination service`.
"""

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings

from keras_transformer._tensorflow import import_tensorflow
from keras_transformer import _compat, validation
from keras_transformer._compat import patch_distributed_fit  # noqa: F401

tf = import_tensorflow(__name__)

STRATEGY_NAMES = ("auto", "default", "mirrored", "multi-worker", "tpu")

_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)

# TensorFlow's default is 10 s, and a worker heartbeats every half of it.
# `finish` needs the chief to outlive the other workers by less than
# timeout - interval (the chief's own exit takes 3-5 s on a busy machine), so
# 30 s leaves a wide margin; a worker that dies outright is noticed at once
# anyway, through its reset connections.
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 30
# Every worker must reach `finish`: the slowest may still be evaluating or
# exporting. A worker lost meanwhile fails the barrier at once.
DEFAULT_FINISH_TIMEOUT_SECONDS = 3600
# How long the chief waits in `finish` for the other processes to end.
_EXIT_WAIT_SECONDS = 120
_EXIT_POLL_SECONDS = 0.1
# What TensorFlow raises in a collective or coordination call once a peer is
# gone: reset connections, heartbeat timeouts, aborted collectives.
_LOST_WORKER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)
_finish_calls = itertools.count()


class WorkerLostError(RuntimeError):
    """A worker of a multi-worker run stopped, so this one stops too."""


def make_strategy(
    name="default",
    tpu=None,
    *,
    heartbeat_timeout_seconds=DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
):
    """Builds the `tf.distribute.Strategy` called `name`.

    - `"default"`: the default strategy (one device, no distribution).
    - `"mirrored"`: `MirroredStrategy` over every local GPU (the CPU without
      GPUs).
    - `"multi-worker"`: `MultiWorkerMirroredStrategy` over the cluster in the
      `TF_CONFIG` environment variable; every worker runs the same program.
    - `"tpu"`: `TPUStrategy` on the TPU named by `tpu` (after connecting to
      its cluster and initialising it).
    - `"auto"`: `"tpu"` when a TPU resolver finds one, else `"mirrored"`
      when there is more than one GPU, else `"default"`.

    Every strategy but the default one comes with `patch_distributed_fit`
    applied, so that Keras' `fit` and `evaluate` work under it. Call this
    before any other TensorFlow op: the multi-worker strategy configures the
    runtime, and fails after it has started ("RuntimeError: Collective ops
    must be configured at program startup").

    Args:
        name: str. One of `"auto"`, `"default"`, `"mirrored"`,
            `"multi-worker"`, `"tpu"`.
        tpu: str or None. For `"tpu"` and `"auto"`: the TPU name, its
            `grpc://` address, or `"local"` on a TPU VM. None reads the
            `TPU_NAME` environment variable (or the Cloud metadata).
        heartbeat_timeout_seconds: int. For `"multi-worker"`: seconds
            without a heartbeat after which a worker counts as lost and every
            other worker stops (TensorFlow's coordination service; default
            30). A worker whose process ends is noticed sooner, by the next
            collective step.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: for an unknown `name`, a missing or malformed `TF_CONFIG`
            (`"multi-worker"`), or no reachable TPU (`"tpu"`).
    """
    validation.check_choice("name", name, STRATEGY_NAMES)
    validation.check_positive_int(
        "heartbeat_timeout_seconds", heartbeat_timeout_seconds
    )
    strategy = _new_strategy(name, tpu, heartbeat_timeout_seconds)
    if strategy is not tf.distribute.get_strategy():
        patch_distributed_fit()
    return strategy


def _new_strategy(name, tpu, heartbeat_timeout_seconds):
    if name == "auto":
        resolver = _find_tpu(tpu)
        if resolver is not None:
            return _tpu_strategy(resolver)
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        check_tf_config()
        return _multi_worker_strategy(heartbeat_timeout_seconds)
    resolver = _find_tpu(tpu)
    if resolver is None:
        raise ValueError(
            "No TPU found for make_strategy('tpu'): pass tpu=<name>, "
            "tpu='grpc://<address>' or tpu='local' (on a TPU VM), or set the "
            f"TPU_NAME environment variable. Received: tpu={tpu!r}"
        )
    return _tpu_strategy(resolver)


def _find_tpu(tpu):
    """Returns a `TPUClusterResolver`, or None when none can be built."""
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    except ValueError:
        return None


def _tpu_strategy(resolver):
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except tf.errors.OpError as error:
        raise ValueError(
            f"Could not initialise the TPU system at {resolver.master()!r}: {error}"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker_strategy(heartbeat_timeout_seconds):
    """`MultiWorkerMirroredStrategy` with the heartbeat timeout set.

    The strategy configures TensorFlow's coordination service only when
    nothing has yet, with TensorFlow's defaults; this configures it first,
    as the strategy would (a standalone service on the chief, or worker 0,
    coordinating the chief and worker tasks), plus the timeout.
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster_spec = resolver.cluster_spec()
    coordinated = resolver.task_type in _COORDINATED_JOBS
    if coordinated and not _compat.coordination_service_configured():
        _compat.configure_coordination_service(
            cluster_spec, _COORDINATED_JOBS, heartbeat_timeout_seconds
        )
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


# The task types that train (and that TensorFlow's strategy coordinates).
_COORDINATED_JOBS = ("chief", "worker")


def check_tf_config():
    """Parses and checks the `TF_CONFIG` environment variable.

    Returns:
        dict, the parsed `TF_CONFIG`: a `"cluster"` mapping each task type
        to its `host:port` list, and this process's `"task"` (`"type"` and
        `"index"`).

    Raises:
        ValueError: when `TF_CONFIG` is unset, not JSON, or does not name
            this task inside its cluster.
    """
    expected = f"Expected JSON like {_TF_CONFIG_EXAMPLE}, one task index per process."
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "Multi-worker training needs the TF_CONFIG environment variable, "
            f"which is not set. {expected}"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}). {expected} "
            f"Received: TF_CONFIG={text!r}"
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if (
        not isinstance(cluster, dict)
        or not isinstance(task, dict)
        or not all(isinstance(hosts, list) for hosts in cluster.values())
    ):
        raise ValueError(
            "TF_CONFIG needs a 'cluster' mapping task types to host:port "
            f"lists and a 'task' with 'type' and 'index'. {expected} "
            f"Received: TF_CONFIG={text!r}"
        )
    task_type, index = task.get("type"), task.get("index")
    hosts = cluster.get(task_type)
    if (
        hosts is None
        or not isinstance(index, int)
        or isinstance(index, bool)
        or not 0 <= index < len(hosts)
    ):
        raise ValueError(
            f"TF_CONFIG's task {task!r} is not in its cluster {cluster!r}: "
            "'type' must be one of the cluster's task types and 'index' a "
            f"position in its list. {expected}"
        )
    return config


def global_batch_size(per_replica, strategy):
    """Returns `per_replica * strategy.num_replicas_in_sync`.

    Batch the dataset given to `fit` with this: every step splits one global
    batch evenly among the replicas, so each sees `per_replica` examples.
    """
    validation.check_positive_int("per_replica", per_replica)
    return per_replica * strategy.num_replicas_in_sync


def jit_compile_works(strategy):
    """Whether `compile(jit_compile=True)` lets Keras 3 `fit` run.

    Keras XLA-compiles the step of all replicas as one program (the
    `strategy.run` call sits inside the compiled function). That works for
    a single replica and on TPUs. With several replicas on CPUs or GPUs the
    program reads variables on the other devices ("Trying to access resource
    ... located in device CPU:1 from device CPU:0", XLA's "tf.Variable on a
    different device" known issue), and in multi-worker mode the collective
    ops fail to convert ("tf2xla conversion failed"); both seen with Keras
    3.15.1 and TensorFlow 2.21 on CPUs. Keras' own `jit_compile="auto"`
    turns XLA off under any strategy for this reason.
    """
    return (
        isinstance(strategy, tf.distribute.TPUStrategy)
        or strategy.num_replicas_in_sync == 1
    )


# The CPU flags (Linux's /proc/cpuinfo) of instructions that multiply
# bfloat16 natively: AVX512-BF16 and AMX on x86. TensorFlow's oneDNN kernels
# use them, so that mixed_bfloat16 runs a step faster than float32; without
# them bfloat16 is converted in software and is no faster.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_INFO_PATH = "/proc/cpuinfo"


def trains_on_bfloat16_cpus(strategy=None):
    """Whether `strategy` (default: the one in scope) trains on this
    machine's CPUs and they multiply bfloat16 natively
    (`BFLOAT16_CPU_FLAGS`); False under a TPU strategy, with a GPU visible,
    or where the CPU's flags cannot be read."""
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return False
    if tf.config.list_logical_devices("GPU"):
        return False
    try:
        with open(CPU_INFO_PATH, encoding="utf-8", errors="replace") as cpu_info:
            flags = next((line for line in cpu_info if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in BFLOAT16_CPU_FLAGS)


def shard_dataset(dataset):
    """Returns `dataset` set to be sharded across workers by data.

    Under a multi-worker strategy, `fit` splits every global batch into
    per-replica batches and each worker keeps its own (the `DATA`
    auto-shard policy). The default, `AUTO`, first tries to give each worker
    its own input files; an in-memory dataset (`from_tensor_slices`, as
    built by `keras_transformer.data`) has none, and with fewer files than
    workers that fails. `DATA` needs every worker to produce the same batches
    in the same order: build the dataset with the same seed everywhere. On
    one worker (default, mirrored, TPU strategies) the option changes
    nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


def is_chief(strategy):
    """Whether this process writes the run's files (exports, logs, plots).

    True for every single-client strategy (default, mirrored, TPU: one
    process drives every device); under `MultiWorkerMirroredStrategy` only
    for the `"chief"` task, or worker 0 when the cluster has no chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type in (None, "chief") or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextlib.contextmanager
def chief_output_dir(path, strategy):
    """Yields where this process writes what belongs under `path`.

    The chief gets `path`. Other workers run the same code (TensorFlow's
    multi-worker guide has every worker save, as saving may need all of
    them), but write into a temporary directory that is deleted on exit, so
    they never overwrite the chief's files.
    """
    if is_chief(strategy):
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="worker_output_")
    try:
        yield os.path.join(scratch, os.path.basename(os.path.normpath(path)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def is_multi_worker(strategy):
    """Whether `strategy` trains in several processes (workers, a chief)."""
    return _num_tasks(strategy) > 1


def _num_tasks(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, ())) for job in _COORDINATED_JOBS)


def gather_from_workers(strategy, number):
    """Returns the integer `number` of every process of the run, on each.

    A collective (an all-gather): under a multi-worker strategy every worker
    must call it at the same point. On a single process it returns
    `[number]`.
    """
    if not is_multi_worker(strategy):
        return [int(number)]
    local = tf.constant([int(number)], tf.int64)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: local
    )
    replicas = strategy.gather(per_replica, axis=0).numpy().tolist()
    # One entry per replica; a worker's replicas are side by side.
    return replicas[:: len(replicas) // _num_tasks(strategy)]


@contextlib.contextmanager
def explain_lost_worker(strategy, advice=None):
    """Turns TensorFlow's errors after a worker is lost into `WorkerLostError`.

    Under a multi-worker strategy, when another worker dies, TensorFlow
    aborts this worker's collectives with an `UnavailableError` ("Connection
    reset by peer", "The tasks have crashed"), a `DeadlineExceededError` or
    an `AbortedError`. Inside this context they become a `WorkerLostError`
    that says so and what to do (`advice`); the original error is chained.
    With any other strategy, or any other error, nothing changes.

    Args:
        strategy: a `tf.distribute.Strategy`.
        advice: str, or a function returning one (called only on failure),
            appended to the message.

    Example:

    ```python
    with distribute.explain_lost_worker(strategy, "Rerun every worker."):
        model.fit(dataset, epochs=10, steps_per_epoch=100)
    ```
    """
    try:
        yield
    except _LOST_WORKER_ERRORS as error:
        if not is_multi_worker(strategy):
            raise
        advice = advice() if callable(advice) else advice
        raise WorkerLostError(
            f"{_task_name(strategy)} stops: another worker of the multi-worker "
            "run was lost (killed, crashed, preempted or unreachable), and "
            "every training step needs all of them. "
            + (f"{advice} " if advice else "")
            + f"TensorFlow reported {type(error).__name__}: {_cause_line(error)}"
        ) from error


# Words of the line that says why, in TensorFlow's many-line messages (the
# rest is tracebacks of the graph, op names and "Restart your program").
_CAUSE_WORDS = re.compile(
    r"aborted by|heartbeat|connect|coordination service|deadline", re.IGNORECASE
)


def _cause_line(error):
    lines = [
        re.sub(r"^\{\{[^}]*\}\}\s*", "", line).strip()
        for line in str(error.message).splitlines()
    ]
    lines = [line for line in lines if line]
    causes = [line for line in lines if _CAUSE_WORDS.search(line)]
    return (causes or lines or [""])[0]


def finish(strategy, timeout_seconds=DEFAULT_FINISH_TIMEOUT_SECONDS):
    """Ends a multi-worker run cleanly: call it last, on every worker.

    Waits until every worker has called it (a barrier of TensorFlow's
    coordination service), then, on the chief, until the other workers'
    processes have ended. The chief runs the coordination service: a worker
    that outlives it loses its heartbeat connection and logs an error, and
    one that ends long before it looks crashed to it. Does nothing under
    single-process strategies.

    Args:
        strategy: the `tf.distribute.Strategy` of the run.
        timeout_seconds: int. How long to wait for the slowest worker to
            arrive (default one hour).

    Raises:
        WorkerLostError: a worker was lost before it arrived.

    Example:

    ```python
    strategy = distribute.make_strategy("multi-worker")
    ...  # build, train, export (the chief's files only)
    distribute.finish(strategy)
    ```
    """
    validation.check_positive_int("timeout_seconds", timeout_seconds)
    if not is_multi_worker(strategy):
        return
    with explain_lost_worker(strategy, "Training itself had finished."):
        _compat.wait_at_barrier(
            f"keras_transformer_finish_{next(_finish_calls)}", timeout_seconds
        )
    if is_chief(strategy):
        _wait_until_ended(_other_task_addresses(strategy))


def _task_name(strategy):
    resolver = strategy.cluster_resolver
    return f"Task {resolver.task_type} {resolver.task_id}"


def _other_task_addresses(strategy):
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict()
    return [
        address
        for job in _COORDINATED_JOBS
        for index, address in enumerate(jobs.get(job, ()))
        if (job, index) != (resolver.task_type, resolver.task_id)
    ]


def _wait_until_ended(addresses):
    """Waits until no process listens at any of the `host:port` addresses."""
    deadline = time.monotonic() + _EXIT_WAIT_SECONDS
    while addresses and time.monotonic() < deadline:
        addresses = [address for address in addresses if _listening(address)]
        if addresses:
            time.sleep(_EXIT_POLL_SECONDS)
    if addresses:
        warnings.warn(
            f"keras_transformer.distribute.finish: the workers at {addresses} "
            f"still run {_EXIT_WAIT_SECONDS} s after the run finished; call "
            "finish() last on every worker, or they log coordination errors "
            "once the chief has exited.",
            stacklevel=3,
        )


def _listening(address):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return True
    except OSError:
        return False
