"""keras_transformer.distribute: strategies, sharding, chief files, patched fit.

Training under a strategy runs in subprocesses: virtual CPU devices must be
configured before TensorFlow starts, and a multi-worker cluster needs one
process per worker. Each subprocess runs this file as a script (see
`worker_main` at the bottom) and saves its run to an `.npz`. Each subprocess
also shows that Keras' own code fails where `patch_distributed_fit` steps in,
by undoing the patch for a moment.

Every run trains the same tiny model from the same initial weights on the
same global batches (dropout 0, SGD). Labels contain no padding, so every
replica averages its loss over the same number of tokens and the mean of the
replicas' gradients is the single-device gradient of the global batch: the
weights agree up to float32 summation order.
"""

import collections
import contextlib
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import types

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import distribute

REPOSITORY = pathlib.Path(__file__).parents[1]
# Workers start TensorFlow and meet over gRPC: generous, but bounded.
TIMEOUT_S = 180
# Per-replica gradients are summed by an all-reduce in a different order
# than one device sums the whole batch: float32 rounding, nothing more
# (measured: at most 6e-8).
RTOL = ATOL = 1e-5
GLOBAL_BATCH = 8
STEPS = 3
# Evaluated on 2 replicas, 5 examples split 3 + 2.
UNEVEN_BATCH = 5


def tiny_problem():
    """Returns (config, inputs, labels): 16 examples, no padding anywhere."""
    from keras_transformer import models

    config = models.TransformerConfig(
        source_vocabulary_size=11,
        target_vocabulary_size=13,
        num_encoder_layers=1,
        num_decoder_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        dropout=0.0,
        max_source_length=6,
        max_target_length=5,
    )
    rng = np.random.default_rng(0)
    inputs = {
        "source_ids": rng.integers(1, 11, (16, 6)).astype("int32"),
        "target_ids": rng.integers(1, 13, (16, 5)).astype("int32"),
    }
    labels = rng.integers(1, 13, (16, 5)).astype("int32")
    return config, inputs, labels


def train(strategy, initial_weights):
    """Trains the tiny model under `strategy`; returns (model, losses)."""
    import keras

    from keras_transformer import losses, models

    config, inputs, labels = tiny_problem()
    with strategy.scope():
        model = models.build_transformer(config, dtype="float32")
        model.set_weights(initial_weights)
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=losses.MaskedSparseCategoricalCrossentropy(),
        )
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    dataset = distribute.shard_dataset(dataset.batch(GLOBAL_BATCH).repeat())
    history = model.fit(
        dataset, epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False
    )
    return model, history.history["loss"]


def evaluate_uneven(model):
    """The loss of `model` on one batch of `UNEVEN_BATCH` examples."""
    _, inputs, labels = tiny_problem()
    first = {name: ids[:UNEVEN_BATCH] for name, ids in inputs.items()}
    dataset = tf.data.Dataset.from_tensor_slices((first, labels[:UNEVEN_BATCH]))
    return model.evaluate(dataset.batch(UNEVEN_BATCH), verbose=0)


def save_run(path, weights, **arrays):
    np.savez(path, *weights, **{key: np.asarray(a) for key, a in arrays.items()})


def load_run(path):
    """Returns (weights, the other arrays by name) saved by `save_run`."""
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    count = sum(key.startswith("arr_") for key in arrays)
    return [arrays.pop(f"arr_{i}") for i in range(count)], arrays


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Initial weights on disk, and single-device training from them."""
    from keras_transformer import models

    config, _, _ = tiny_problem()
    initial = models.build_transformer(config, dtype="float32").get_weights()
    path = tmp_path_factory.mktemp("reference") / "initial.npz"
    save_run(path, initial)
    model, losses = train(tf.distribute.get_strategy(), initial)
    return types.SimpleNamespace(
        initial_path=path,
        weights=model.get_weights(),
        losses=losses,
        uneven_loss=evaluate_uneven(model),
    )


def subprocess_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def localhost_cluster(size):
    """`host:port` addresses of `size` workers on free loopback ports."""
    return [f"127.0.0.1:{port}" for port in free_ports(size)]


def worker_env(hosts, index, **extra):
    """The environment of worker `index` of the cluster `hosts`."""
    tf_config = {
        "cluster": {"worker": hosts},
        "task": {"type": "worker", "index": index},
    }
    return subprocess_env(TF_CONFIG=json.dumps(tf_config), **extra)


# What a process that ends by itself or by a signal leaves behind; `ended_at`
# (`time.time()`, to 50 ms) is None for one killed at the timeout.
Finished = collections.namedtuple("Finished", "returncode output ended_at")


def run_processes(commands_and_envs, timeout=TIMEOUT_S):
    """Runs the commands concurrently from the repository root.

    Every process still running after `timeout` seconds is killed, and all
    are reaped whatever happens. Returns one `Finished` per command.
    """
    processes, logs = [], []
    ended = [None] * len(commands_and_envs)
    try:
        for command, env in commands_and_envs:
            # A file, not a pipe: nobody reads a pipe while waiting for many.
            logs.append(tempfile.TemporaryFile("w+"))
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=REPOSITORY,
                    env=env,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        while None in ended and time.monotonic() < deadline:
            for index, process in enumerate(processes):
                if ended[index] is None and process.poll() is not None:
                    ended[index] = time.time()
            time.sleep(0.05)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=TIMEOUT_S)
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return [
        Finished(process.returncode, output, end)
        for process, output, end in zip(processes, outputs, ended, strict=True)
    ]


# Error-level lines: TensorFlow's C++ logs (`E0000 00:00:...`) and Python's
# logging ("ERROR:absl:..."). A CUDA build of TensorFlow on a machine without
# a GPU driver logs one at start-up that says only that; it is not ours.
ERROR_LINE = re.compile(r"^(E\d{4} |ERROR:)", re.MULTILINE)
NO_GPU_DRIVER = re.compile(r"^E\d{4} .*failed call to cuInit.*$\n?", re.MULTILINE)


def error_lines(output):
    """The error-level log lines of `output`, except the no-GPU-driver one."""
    return [
        line
        for line in NO_GPU_DRIVER.sub("", output).splitlines()
        if ERROR_LINE.match(line)
    ]


def worker_command(mode, initial_path, output_path):
    return [
        sys.executable,
        "-m",
        "tests.test_distribute",
        mode,
        str(initial_path),
        str(output_path),
    ]


@pytest.fixture(scope="module")
def mirrored_run(reference, tmp_path_factory):
    """`worker_main("mirrored", ...)` on 2 virtual CPUs: (weights, arrays)."""
    output_path = tmp_path_factory.mktemp("mirrored") / "run.npz"
    command = worker_command("mirrored", reference.initial_path, output_path)
    [run] = run_processes([(command, subprocess_env())])
    assert run.returncode == 0, run.output
    return load_run(output_path)


@pytest.fixture(scope="module")
def two_worker_runs(reference, tmp_path_factory):
    """`worker_main("multi-worker", ...)` on a 2-worker localhost cluster.

    Returns one (weights, arrays, output) per worker.
    """
    directory = tmp_path_factory.mktemp("cluster")
    hosts = localhost_cluster(2)
    runs = run_processes(
        [
            (
                worker_command(
                    "multi-worker",
                    reference.initial_path,
                    directory / f"worker_{index}.npz",
                ),
                worker_env(hosts, index),
            )
            for index in range(2)
        ]
    )
    for run in runs:
        assert run.returncode == 0, run.output
    return [
        (*load_run(directory / f"worker_{index}.npz"), run.output)
        for index, run in enumerate(runs)
    ]


def assert_weights_close(weights, expected):
    assert len(weights) == len(expected)
    for actual, wanted in zip(weights, expected):
        np.testing.assert_allclose(actual, wanted, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("flags, expected", [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx2 amx_bf16 amx_tile", True),
    ("fpu avx2 avx512f avx512_vnni", False),
    # A flag's name inside another's is not the flag.
    ("fpu avx512_bf16x", False),
])  # fmt: skip
def test_bfloat16_cpus_are_recognised_by_their_flags(flags, expected, tmp_path, monkeypatch):
    cpu_info = tmp_path / "cpuinfo"
    cpu_info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="utf-8")
    monkeypatch.setattr(distribute, "CPU_INFO_PATH", str(cpu_info))
    assert distribute.trains_on_bfloat16_cpus() is expected


def test_cpus_whose_flags_cannot_be_read_do_not_count_as_bfloat16_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(distribute, "CPU_INFO_PATH", str(tmp_path / "missing"))
    assert distribute.trains_on_bfloat16_cpus() is False


@pytest.mark.slow
def test_mirrored_on_two_cpus_trains_like_one_device_on_the_global_batch(
    reference, mirrored_run
):
    weights, arrays = mirrored_run
    assert_weights_close(weights, reference.weights)
    np.testing.assert_allclose(arrays["losses"], reference.losses, rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_mirrored_evaluates_a_batch_that_splits_unevenly(reference, mirrored_run):
    _, arrays = mirrored_run
    assert re.search(
        r"in _maybe_symbolic_build\n[\s\S]*InvalidArgumentError: [\s\S]*Inputs to "
        r"operation AddN of type AddN must have the same size and shape",
        str(arrays["unpatched_error"]),
    ), arrays["unpatched_error"]
    # Keras weighs each replica's mean loss by its batch size (3 and 2).
    np.testing.assert_allclose(
        arrays["uneven_loss"], reference.uneven_loss, rtol=RTOL, atol=ATOL
    )


@pytest.mark.slow
def test_two_workers_train_identically_and_like_one_device(reference, two_worker_runs):
    (weights_0, arrays_0, _), (weights_1, arrays_1, _) = two_worker_runs
    # One all-reduce gives every worker the same bits.
    for first, second in zip(weights_0, weights_1):
        np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(arrays_0["losses"], arrays_1["losses"])
    assert_weights_close(weights_0, reference.weights)
    np.testing.assert_allclose(
        arrays_0["losses"], reference.losses, rtol=RTOL, atol=ATOL
    )


@pytest.mark.slow
def test_successful_two_worker_run_logs_no_error_on_either_worker(two_worker_runs):
    for _, _, output in two_worker_runs:
        assert error_lines(output) == [], output


@pytest.mark.slow
def test_multi_worker_fit_fails_without_each_half_of_the_patch(two_worker_runs):
    for _, arrays, _ in two_worker_runs:
        unpatched, logs_unpatched = (str(error) for error in arrays["errors"])
        assert re.search(
            r"in _maybe_symbolic_build\n[\s\S]*ValueError: Attempt to convert a "
            r"value \(\{'source_ids': PerReplica",
            unpatched,
        ), unpatched
        assert re.search(
            r"in reduce_per_replica\n[\s\S]*Invalid reduction dimension 0 for "
            r"input with 0 dimensions",
            logs_unpatched,
        ), logs_unpatched


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG environment variable, which is not set"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', "needs a 'cluster' mapping task types"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            "is not in its cluster",
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
            "is not in its cluster",
        ),
    ],
)
def test_multi_worker_strategy_explains_a_missing_or_malformed_tf_config(
    monkeypatch, tf_config, message
):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message) as raised:
        distribute.make_strategy("multi-worker")
    assert '"task": {"type": "worker", "index": 0}' in str(raised.value)


def test_make_strategy_rejects_an_unknown_name():
    with pytest.raises(
        ValueError,
        match="Received an invalid value for argument name, expected one of "
        "'auto', 'default', 'mirrored', 'multi-worker', 'tpu'. Received: "
        "name='horovod'",
    ):
        distribute.make_strategy("horovod")


def test_tpu_strategy_without_a_tpu_says_how_to_name_one(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ValueError, match="No TPU found for make_strategy\\('tpu'\\)"):
        distribute.make_strategy("tpu")


def test_auto_on_a_machine_without_tpu_or_gpus_is_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        pytest.skip("this machine has several GPUs: auto picks MirroredStrategy")
    assert distribute.make_strategy("auto") is tf.distribute.get_strategy()
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()


def test_global_batch_size_multiplies_by_the_replicas():
    two_replicas = types.SimpleNamespace(num_replicas_in_sync=2)
    assert distribute.global_batch_size(16, two_replicas) == 32
    assert distribute.global_batch_size(16, tf.distribute.get_strategy()) == 16
    with pytest.raises(ValueError, match="Received: per_replica=0"):
        distribute.global_batch_size(0, two_replicas)


def test_shard_dataset_shards_by_data():
    dataset = distribute.shard_dataset(tf.data.Dataset.range(4).batch(2))
    assert (
        dataset.options().experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.DATA
    )
    assert [batch.tolist() for batch in dataset.as_numpy_iterator()] == [[0, 1], [2, 3]]


def cluster_member(task_type, task_id, cluster):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )
    return types.SimpleNamespace(cluster_resolver=resolver)


CLUSTER_MEMBERS = [
    ("worker", 0, {"worker": ["a:1", "b:1"]}, True),
    ("worker", 1, {"worker": ["a:1", "b:1"]}, False),
    ("chief", 0, {"chief": ["c:1"], "worker": ["a:1"]}, True),
    ("worker", 0, {"chief": ["c:1"], "worker": ["a:1"]}, False),
]


@pytest.mark.parametrize("task_type, task_id, cluster, chief", CLUSTER_MEMBERS)
def test_only_the_chief_writes_to_the_real_output_dir(
    tmp_path, task_type, task_id, cluster, chief
):
    strategy = cluster_member(task_type, task_id, cluster)
    assert distribute.is_chief(strategy) is chief
    target = str(tmp_path / "export")
    with distribute.chief_output_dir(target, strategy) as path:
        os.makedirs(path)
        open(os.path.join(path, "file"), "w").close()
    assert (path == target) is chief
    # A worker's scratch copy is gone; the chief's files stay.
    assert os.path.exists(path) is chief


def test_single_process_strategies_are_chief(tmp_path):
    assert distribute.is_chief(tf.distribute.get_strategy())
    with distribute.chief_output_dir(
        str(tmp_path), tf.distribute.get_strategy()
    ) as path:
        assert path == str(tmp_path)


def test_multi_worker_means_several_processes():
    for task_type, task_id, cluster, _ in CLUSTER_MEMBERS:
        assert distribute.is_multi_worker(cluster_member(task_type, task_id, cluster))
    assert not distribute.is_multi_worker(
        cluster_member("worker", 0, {"worker": ["a:1"]})
    )
    assert not distribute.is_multi_worker(tf.distribute.get_strategy())
    assert distribute.gather_from_workers(tf.distribute.get_strategy(), 7) == [7]


LOST = tf.errors.UnavailableError(
    None, None, "Collective ops is aborted by: Connection reset by peer"
)


def test_a_lost_worker_becomes_an_error_that_says_what_to_do():
    strategy = cluster_member("worker", 1, {"worker": ["a:1", "b:1"]})
    with pytest.raises(distribute.WorkerLostError) as raised:
        with distribute.explain_lost_worker(strategy, lambda: "Rerun them all."):
            raise LOST
    assert str(raised.value) == (
        "Task worker 1 stops: another worker of the multi-worker run was lost "
        "(killed, crashed, preempted or unreachable), and every training step "
        "needs all of them. Rerun them all. TensorFlow reported "
        "UnavailableError: Collective ops is aborted by: Connection reset by peer"
    )
    assert raised.value.__cause__ is LOST


def test_a_lost_worker_error_quotes_the_line_that_says_why():
    strategy = cluster_member("worker", 0, {"worker": ["a:1", "b:1"]})
    graph_error = tf.errors.UnavailableError(
        None,
        None,
        "Graph execution error:\n\nDetected at node adam/CollectiveReduceV2\n"
        '  File "train.py", line 1\n'
        ':UNKNOWN:Error received from peer {grpc_message:"recvmsg:Connection '
        'reset by peer", grpc_status:14}\n'
        "\t [[{{node adam/CollectiveReduceV2}}]] [Op:__inference_step_1011]",
    )
    with pytest.raises(distribute.WorkerLostError) as raised:
        with distribute.explain_lost_worker(strategy):
            raise graph_error
    assert str(raised.value).endswith(
        'UnavailableError: :UNKNOWN:Error received from peer {grpc_message:"'
        'recvmsg:Connection reset by peer", grpc_status:14}'
    )


def test_other_errors_and_single_process_runs_keep_their_errors():
    worker = cluster_member("worker", 1, {"worker": ["a:1", "b:1"]})
    with pytest.raises(ValueError, match="not a lost worker"):
        with distribute.explain_lost_worker(worker, "unused"):
            raise ValueError("not a lost worker")
    with pytest.raises(tf.errors.UnavailableError):
        with distribute.explain_lost_worker(tf.distribute.get_strategy(), "unused"):
            raise LOST


def test_finish_does_nothing_on_one_process():
    assert distribute.finish(tf.distribute.get_strategy()) is None
    with pytest.raises(ValueError, match="Received: timeout_seconds=0"):
        distribute.finish(tf.distribute.get_strategy(), timeout_seconds=0)


def test_make_strategy_rejects_a_heartbeat_timeout_that_is_not_positive():
    with pytest.raises(ValueError, match="Received: heartbeat_timeout_seconds=0"):
        distribute.make_strategy("multi-worker", heartbeat_timeout_seconds=0)


def test_train_script_sends_a_workers_outputs_to_scratch_space(tmp_path):
    # Imported here: this file also runs as a worker script, where the tests
    # package is not importable.
    from tests.conftest import load_script

    script = load_script("train")
    flags = {
        "output_dir": str(tmp_path / "saved"),
        "log_dir": str(tmp_path / "logs"),
        "attention_plot": str(tmp_path / "attention.png"),
    }
    args = types.SimpleNamespace(**flags)
    worker = cluster_member("worker", 1, {"worker": ["a:1", "b:1"]})
    with script.chief_writes_outputs(args, worker):
        for flag in flags:
            path = getattr(args, flag)
            assert not path.startswith(str(tmp_path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
    assert not any(os.path.exists(getattr(args, flag)) for flag in flags)
    chief = types.SimpleNamespace(**flags)
    with script.chief_writes_outputs(chief, tf.distribute.get_strategy()):
        assert vars(chief) == flags


def test_patch_leaves_keras_alone_once_upstream_is_fixed(monkeypatch):
    from keras.src.backend.tensorflow import trainer

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        return None

    def reduce_per_replica(values, strategy, reduction):
        return values

    monkeypatch.setattr(
        trainer.TensorFlowTrainer, "_maybe_symbolic_build", _maybe_symbolic_build
    )
    monkeypatch.setattr(trainer, "reduce_per_replica", reduce_per_replica)
    with pytest.warns(UserWarning, match="keras#20585 looks fixed") as warned:
        assert distribute.patch_distributed_fit() == ()
    assert len(warned) == 2
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is _maybe_symbolic_build
    assert trainer.reduce_per_replica is reduce_per_replica


def failure_of(function, *args):
    """Returns the traceback of the error `function(*args)` raises."""
    try:
        function(*args)
    except (ValueError, tf.errors.InvalidArgumentError):
        return traceback.format_exc()
    raise SystemExit(f"{function.__name__} did not fail")


@contextlib.contextmanager
def unpatched(*names):
    """Puts Keras' own code back for the functions `names` meanwhile."""
    from keras.src.backend.tensorflow import trainer

    owners = {
        "_maybe_symbolic_build": trainer.TensorFlowTrainer,
        "reduce_per_replica": trainer,
    }
    patched = {name: getattr(owners[name], name) for name in names}
    for name, wrapper in patched.items():
        setattr(owners[name], name, wrapper.__wrapped__)
    try:
        yield
    finally:
        for name, wrapper in patched.items():
            setattr(owners[name], name, wrapper)


def worker_main(mode, initial_path, output_path):
    """Trains in this process as `mode` says and saves the run."""
    import keras
    from keras.src.backend.tensorflow import trainer

    keras.config.disable_traceback_filtering()
    initial, _ = load_run(initial_path)
    if mode == "mirrored":
        # The multi-worker runs are not lightened: their logs are checked
        # for errors (see lighten_graph_optimizations).
        from tests.conftest import lighten_graph_optimizations

        lighten_graph_optimizations()
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = distribute.make_strategy("mirrored")
        model, losses = train(strategy, initial)
        with unpatched("_maybe_symbolic_build"):
            error = failure_of(evaluate_uneven, model)
        arrays = {"unpatched_error": error, "uneven_loss": evaluate_uneven(model)}
    elif mode == "multi-worker":
        strategy = distribute.make_strategy("multi-worker")
        build = trainer.TensorFlowTrainer._maybe_symbolic_build
        patched = distribute.patch_distributed_fit()
        if patched != ("TensorFlowTrainer._maybe_symbolic_build", "reduce_per_replica"):
            raise SystemExit(f"patched {patched}")
        if trainer.TensorFlowTrainer._maybe_symbolic_build is not build:
            raise SystemExit("patching twice wrapped _maybe_symbolic_build twice")
        # Keras' own functions fail before any collective runs, identically
        # on both workers, so the cluster stays in step for the real run.
        with unpatched("_maybe_symbolic_build", "reduce_per_replica"):
            errors = [failure_of(train, strategy, initial)]
        with unpatched("reduce_per_replica"):
            errors.append(failure_of(train, strategy, initial))
        model, losses = train(strategy, initial)
        arrays = {"errors": errors}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if strategy.num_replicas_in_sync != 2:
        raise SystemExit(f"{strategy.num_replicas_in_sync} replicas, expected 2")
    save_run(output_path, model.get_weights(), losses=losses, **arrays)
    distribute.finish(strategy)


if __name__ == "__main__":
    worker_main(*sys.argv[1:])
