"""Resumable training: killed runs end bit-identical to an uninterrupted one.

The slow tests run this file as a child process (`python -m
tests.test_checkpointing ...`) that trains a tiny Transformer with dropout
under op determinism, killed with SIGKILL at chosen steps (once halfway
through writing a checkpoint) and restarted until done; with `--multi-worker`
the child is one worker of a two-worker localhost cluster, and one worker
(the other one, then the chief) is killed. The fast tests train a small dense
model in-process to check fallback, atomicity and errors.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import checkpointing, distribute, losses, metrics, models
from tests.test_distribute import (
    error_lines,
    localhost_cluster,
    run_processes,
    worker_env,
)

REPOSITORY = pathlib.Path(__file__).parents[1]
# A child imports TensorFlow, builds, traces and trains for 18 steps: ~10 s
# alone, ~120 s measured with the 2 cores shared by 12 busy processes. Only a
# guard against a hang.
CHILD_TIMEOUT = 300
SEED = 11
EPOCHS = 3
STEPS_PER_EPOCH = 6
SAVE_EVERY_STEPS = 4  # saves at steps 4, 8, 12 (an epoch end), 16 and 18
BATCH_SIZE = 4
NUM_PAIRS = 20  # 5 batches a pass: epochs and passes over the data differ
LENGTH = 8
VOCABULARY_SIZE = 16
# The chief notices a killed worker only when its heartbeats stop for this
# long (a killed chief is noticed at once: its connections reset). With the
# library's 30 s default the first cluster launch waited ~30 s with nothing
# to compute (41.6 s of the cluster fixture's 58.7 s). TensorFlow's own
# default is 10 s; heartbeats are sent every half of it.
HEARTBEAT_TIMEOUT_S = 12


# --- the child process ------------------------------------------------------


def tiny_transformer():
    config = models.TransformerConfig(
        source_vocabulary_size=VOCABULARY_SIZE,
        target_vocabulary_size=VOCABULARY_SIZE,
        num_encoder_layers=1,
        num_decoder_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.3,
        max_source_length=LENGTH,
        max_target_length=LENGTH,
    )
    model = models.build_transformer(config)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=losses.MaskedSparseCategoricalCrossentropy(),
        metrics=[metrics.MaskedAccuracy()],
    )
    return model


def translation_pairs():
    rng = np.random.default_rng(SEED)
    lengths = rng.integers(2, LENGTH + 1, size=(3, NUM_PAIRS))
    source, target, labels = (
        np.where(
            np.arange(LENGTH) < length[:, None],
            rng.integers(1, VOCABULARY_SIZE, size=(NUM_PAIRS, LENGTH)),
            0,
        ).astype("int32")
        for length in lengths
    )
    return {"source_ids": source, "target_ids": target}, labels


def stream_dataset():
    """One repeated stream, reshuffled every pass, read across epochs."""
    return (
        tf.data.Dataset.from_tensor_slices(translation_pairs())
        .shuffle(NUM_PAIRS, seed=SEED, reshuffle_each_iteration=True)
        .repeat()
        .batch(BATCH_SIZE)
    )


def validation_dataset():
    return tf.data.Dataset.from_tensor_slices(translation_pairs()).batch(10)


class AtStep(keras.callbacks.Callback):
    """Calls `action()` once the optimizer has done `step` steps."""

    def __init__(self, step, action):
        super().__init__()
        self.step = step
        self.action = action

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            self.action()


def kill_this_process():
    # When, for the test that measures how soon the other workers stop.
    print(f"killed at {time.time()!r}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def die_during_save(save_number):
    """Makes the `save_number`-th save of this process die mid-write."""
    write_state = checkpointing._write_state
    saves = []

    def half_written_then_killed(path, arrays):
        saves.append(path)
        write_state(path, arrays)
        if len(saves) == save_number:
            with open(path, "r+b") as file:
                file.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpointing._write_state = half_written_then_killed


def train(directory, callbacks=(), uninterrupted_fit=False):
    keras.utils.set_random_seed(SEED)
    model = tiny_transformer()
    options = dict(
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        validation_data=validation_dataset(),
        callbacks=list(callbacks),
        verbose=0,
    )
    if uninterrupted_fit:
        history = model.fit(stream_dataset(), **options)
    else:
        history = checkpointing.fit_resumable(
            model,
            stream_dataset,
            directory=directory,
            save_every_steps=SAVE_EVERY_STEPS,
            **options,
        )
    return model, history.history


def final_state(model):
    return {
        f"{group}/{index}": variable.numpy()
        for group, variables in (
            ("model", model.variables),
            ("optimizer", model.optimizer.variables),
        )
        for index, variable in enumerate(variables)
    }


def count_checkpoint_writes():
    """Counts this process's `_write_checkpoint` calls; returns the list."""
    write_checkpoint = checkpointing._write_checkpoint
    writes = []

    def counted(directory, *args):
        writes.append(directory)
        write_checkpoint(directory, *args)

    checkpointing._write_checkpoint = counted
    return writes


def train_on_cluster(args, callbacks):
    """Trains `dense_model` as one worker of the `TF_CONFIG` cluster.

    A dense model and no validation: every worker traces its functions on
    the shared cores, and what is under test is the checkpointing, which
    sees only variables (the dropout's seed state included).
    """
    strategy = distribute.make_strategy(
        "multi-worker", heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S
    )
    writes = count_checkpoint_writes()
    with strategy.scope():
        model = dense_model()

    def make_dataset():
        # A global batch of 4: 2 examples per worker; 3 batches a pass.
        return distribute.shard_dataset(
            dense_pairs()
            .shuffle(12, seed=SEED, reshuffle_each_iteration=True)
            .repeat()
            .batch(4)
        )

    options = dict(
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        callbacks=[StartedAt(), *callbacks],
        verbose=0,
    )
    history = checkpointing.fit_resumable(
        model,
        make_dataset,
        directory=args.directory,
        save_every_steps=SAVE_EVERY_STEPS,
        **options,
    )
    from tensorflow.python.eager import context

    facts = {
        "checkpoint_writes": len(writes),
        "heartbeat_timeout_ms": (
            context.context().coordination_service.heartbeat_timeout_in_ms
        ),
    }
    return model, history.history, facts, strategy


class StartedAt(keras.callbacks.Callback):
    """Prints the step training starts from (after any restore)."""

    def on_train_begin(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        print(f"training from step {step}", flush=True)


def child_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--directory", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-during-save", type=int)
    parser.add_argument(
        "--uninterrupted-fit",
        action="store_true",
        help="plain model.fit, no checkpoints (the reference)",
    )
    parser.add_argument(
        "--multi-worker",
        action="store_true",
        help="one worker of the TF_CONFIG cluster; finish() at the end",
    )
    parser.add_argument(
        "--finish-after",
        type=float,
        default=0.0,
        help="seconds to wait between training and finish()",
    )
    args = parser.parse_args(argv)
    if not args.multi_worker:
        # Workers run as users' do: their logs are checked for errors.
        from tests.conftest import lighten_graph_optimizations

        lighten_graph_optimizations()
    tf.config.experimental.enable_op_determinism()
    callbacks = []
    if args.kill_at_step:
        callbacks.append(AtStep(args.kill_at_step, kill_this_process))
    if args.kill_during_save:
        die_during_save(args.kill_during_save)
    if args.multi_worker:
        model, history, facts, strategy = train_on_cluster(args, callbacks)
    else:
        model, history = train(args.directory, callbacks, args.uninterrupted_fit)
        facts, strategy = {}, None
    np.savez(args.output, **final_state(model))
    with open(args.output + ".history.json", "w") as file:
        json.dump(history, file)
    with open(args.output + ".facts.json", "w") as file:
        json.dump(facts, file)
    if strategy is not None:
        time.sleep(args.finish_after)
        distribute.finish(strategy)


# --- running children -------------------------------------------------------


def start_child(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.test_checkpointing", *map(str, args)],
        cwd=REPOSITORY,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish_child(process):
    """Waits for a child's end or SIGKILL; returns its exit code."""
    try:
        output, _ = process.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    if process.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(
            f"child {process.args} exited with {process.returncode}:\n"
            + output.decode(errors="replace")[-4000:]
        )
    return process.returncode


def run_child(*args):
    return finish_child(start_child(*args))


def load_result(output):
    with np.load(output) as arrays:
        state = {name: arrays[name] for name in arrays.files}
    with open(str(output) + ".history.json") as file:
        return state, json.load(file)


def visible_checkpoints(directory):
    return sorted(
        (name for name in os.listdir(directory) if name.startswith("ckpt-")),
        key=lambda name: int(name.split("-")[1]),
    )


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """An uninterrupted `model.fit`, and a run killed twice then finished.

    Saves fall at steps 4, 8, 12 (written at the end of epoch 1), 16 and 18.
    The first child is killed at step 6 and resumes mid-epoch 0 from step 4;
    the second is killed halfway through writing its third save (16) and
    resumes at the start of epoch 2 from step 12; the third runs to the end.
    """
    root = tmp_path_factory.mktemp("killed_runs")
    runs = {"root": root}
    reference_output = root / "reference.npz"
    # Runs beside the killed children: it shares nothing with them.
    reference = start_child(
        "--uninterrupted-fit",
        "--directory",
        root / "unused",
        "--output",
        reference_output,
    )
    try:
        directory = root / "checkpoints"
        output = root / "resumed.npz"
        common = ("--directory", directory, "--output", output)
        assert run_child(*common, "--kill-at-step", 6) == -signal.SIGKILL
        runs["after_kill_at_step"] = visible_checkpoints(directory)
        assert run_child(*common, "--kill-during-save", 3) == -signal.SIGKILL
        runs["after_kill_during_save"] = sorted(os.listdir(directory))
        runs["staging_contents"] = [
            sorted(os.listdir(directory / name))
            for name in runs["after_kill_during_save"]
            if name.startswith(".tmp-")
        ]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs["latest_after_kill_during_save"] = checkpointing.latest_checkpoint(
                directory
            )
        runs["warnings_after_kill_during_save"] = [str(w.message) for w in caught]
        assert run_child(*common) == 0
        runs["resumed"] = load_result(output)
        runs["final_folders"] = sorted(os.listdir(directory))
        assert finish_child(reference) == 0
        runs["reference"] = load_result(reference_output)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait(timeout=10)
    yield runs
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_run_killed_mid_epoch_and_mid_write_ends_bit_identical_to_plain_fit(
    killed_runs,
):
    assert killed_runs["after_kill_at_step"] == ["ckpt-4"]
    state, history = killed_runs["resumed"]
    reference_state, reference_history = killed_runs["reference"]
    assert state.keys() == reference_state.keys()
    different = [
        name for name in state if not np.array_equal(state[name], reference_state[name])
    ]
    assert not different, f"differ from the uninterrupted run: {different}"
    # Equal epoch losses: the resumed epoch averaged over all its batches.
    assert history == reference_history


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_no_partial_checkpoint_visible(
    killed_runs,
):
    folders = killed_runs["after_kill_during_save"]
    # The half-written save stayed in its staging folder.
    assert [name for name in folders if not name.startswith(".tmp-ckpt-16-")] == [
        "ckpt-12",
        "ckpt-8",
    ]
    assert len(folders) == 3
    # Killed halfway through state.npz: the manifest was never written.
    assert killed_runs["staging_contents"] == [[checkpointing.STATE_FILE]]
    latest = killed_runs["latest_after_kill_during_save"]
    assert (latest.step, latest.epoch, latest.step_in_epoch) == (12, 2, 0)
    assert killed_runs["warnings_after_kill_during_save"] == []
    # The next run removed the staging folder; two checkpoints are kept.
    assert killed_runs["final_folders"] == ["ckpt-16", "ckpt-18"]


@pytest.mark.slow
def test_final_checkpoint_records_the_whole_history(killed_runs):
    checkpoint = checkpointing.latest_checkpoint(killed_runs["root"] / "checkpoints")
    assert (checkpoint.step, checkpoint.epoch, checkpoint.step_in_epoch) == (18, 3, 0)
    assert checkpoint.history == killed_runs["reference"][1]


# --- two workers, one killed at a time ----------------------------------------

# The others' next collective fails when the killed worker's connections
# reset, or at the latest after the heartbeat timeout; then Python and
# TensorFlow shut down (up to 8 s). Measured 14-28 s with the 2 cores shared
# by 13 busy processes. Generous, but bounded: a hang fails.
LOST_WORKER_EXIT_S = 90


def cluster_commands(hosts, directory, outputs, extra_flags):
    """(command, env) of each worker; `extra_flags[index]`: its own flags."""
    return [
        (
            [
                sys.executable,
                "-m",
                "tests.test_checkpointing",
                "--multi-worker",
                "--directory",
                str(directory),
                "--output",
                str(output),
                *map(str, flags),
            ],
            worker_env(hosts, index),
        )
        for index, (output, flags) in enumerate(zip(outputs, extra_flags, strict=True))
    ]


def killed_at(output):
    """When the worker whose `output` this is killed itself (`time.time()`)."""
    return float(output.split("killed at ")[1].split()[0])


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """Two workers: an uninterrupted run, and a run killed twice.

    Both are `fit_resumable` on a stream reshuffled on every pass: the
    uninterrupted one into a directory of its own. Saves fall at steps 4, 8,
    12, 16 and 18, as in `killed_runs`. Worker 1
    is killed at step 6: both resume from step 4, mid-epoch 0. The chief
    (worker 0) is killed at step 10: both resume from step 8, mid-epoch 1,
    and run to the end. Every launch reruns the same commands on the same
    ports. The uninterrupted run is a cluster of its own on other ports,
    run beside the first launch (it shares nothing with it, and its workers
    compute while the killed launch's survivor waits to notice the loss).
    In the uninterrupted run the chief finishes 3 s before worker 1.
    """
    root = tmp_path_factory.mktemp("cluster_runs")
    ports = localhost_cluster(4)  # four distinct ports: two clusters
    hosts, reference_hosts = ports[:2], ports[2:]
    directory = root / "checkpoints"
    outputs = [root / f"worker_{index}.npz" for index in range(2)]
    reference_outputs = [root / f"reference_{index}.npz" for index in range(2)]
    runs = types.SimpleNamespace(directory=directory, outputs=outputs)
    first_two_launches = run_processes(
        cluster_commands(
            reference_hosts,
            root / "reference",
            reference_outputs,
            [[], ["--finish-after", 3]],
        )
        + cluster_commands(hosts, directory, outputs, [[], ["--kill-at-step", 6]])
    )
    runs.reference, runs.worker_killed = first_two_launches[:2], first_two_launches[2:]
    runs.reference_results = [load_result(output) for output in reference_outputs]
    runs.after_worker_killed = visible_checkpoints(directory)
    runs.chief_killed = run_processes(
        cluster_commands(hosts, directory, outputs, [["--kill-at-step", 10], []])
    )
    runs.after_chief_killed = visible_checkpoints(directory)
    runs.resumed = run_processes(cluster_commands(hosts, directory, outputs, [[], []]))
    runs.results = [load_result(output) for output in outputs]
    runs.facts = [
        json.loads(pathlib.Path(f"{output}.facts.json").read_text())
        for output in outputs
    ]
    runs.final_folders = sorted(os.listdir(directory))
    yield runs
    shutil.rmtree(root, ignore_errors=True)


def assert_lost_worker_stopped_everyone(launch, victim, resume_step, directory):
    killed, survivor = launch[victim], launch[1 - victim]
    assert killed.returncode == -signal.SIGKILL, killed.output
    assert survivor.returncode == 1, survivor.output
    assert "WorkerLostError: Task worker " in survivor.output
    assert (
        f"The last complete checkpoint is {directory / f'ckpt-{resume_step}'} "
        f"(step {resume_step}): start every worker again with the same command"
        in survivor.output
    ), survivor.output
    exit_seconds = survivor.ended_at - killed_at(killed.output)
    assert exit_seconds < LOST_WORKER_EXIT_S, f"exited {exit_seconds:.1f} s after"


@pytest.mark.slow
def test_killing_a_worker_mid_epoch_stops_the_other_with_the_checkpoint_to_resume(
    cluster_runs,
):
    assert cluster_runs.after_worker_killed == ["ckpt-4"]
    assert_lost_worker_stopped_everyone(
        cluster_runs.worker_killed, 1, 4, cluster_runs.directory
    )


@pytest.mark.slow
def test_killing_the_chief_mid_epoch_stops_the_other_worker_too(cluster_runs):
    # The chief wrote ckpt-8 before it died; worker 1 names it.
    assert cluster_runs.after_chief_killed == ["ckpt-4", "ckpt-8"]
    assert_lost_worker_stopped_everyone(
        cluster_runs.chief_killed, 0, 8, cluster_runs.directory
    )


@pytest.mark.slow
def test_every_worker_resumes_from_the_chiefs_last_checkpoint(cluster_runs):
    for launch, step in [(cluster_runs.chief_killed, 4), (cluster_runs.resumed, 8)]:
        for run in launch:
            # The first fit finishes the epoch the checkpoint is in.
            assert f"training from step {step}\n" in run.output, run.output


@pytest.mark.slow
def test_two_workers_killed_and_resumed_end_bit_identical_to_an_uninterrupted_run(
    cluster_runs,
):
    assert [run.returncode for run in cluster_runs.resumed] == [0, 0]
    for (state, history), (reference_state, reference_history) in zip(
        cluster_runs.results, cluster_runs.reference_results, strict=True
    ):
        assert state.keys() == reference_state.keys()
        different = [
            name
            for name in state
            if not np.array_equal(state[name], reference_state[name])
        ]
        assert not different, f"differ from the uninterrupted run: {different}"
        # On restore each worker's replica gets half of a metric total, so
        # the resumed epoch's average is summed in another order: measured
        # 1 float32 ulp apart (3.8987960815 vs 3.8987963200).
        assert history.keys() == reference_history.keys()
        for name, values in history.items():
            np.testing.assert_allclose(values, reference_history[name], rtol=1e-6)


@pytest.mark.slow
def test_only_the_chief_writes_checkpoints(cluster_runs):
    # The final run wrote 12, 16 and 18 and kept the two newest.
    assert [facts["checkpoint_writes"] for facts in cluster_runs.facts] == [3, 0]
    assert cluster_runs.final_folders == ["ckpt-16", "ckpt-18"]


@pytest.mark.slow
def test_two_worker_runs_that_finish_apart_log_no_error(cluster_runs):
    for run in cluster_runs.reference + cluster_runs.resumed:
        assert run.returncode == 0, run.output
        assert error_lines(run.output) == [], run.output


@pytest.mark.slow
def test_multi_worker_strategy_sets_the_heartbeat_timeout_it_is_given(cluster_runs):
    expected = HEARTBEAT_TIMEOUT_S * 1000
    assert [facts["heartbeat_timeout_ms"] for facts in cluster_runs.facts] == [
        expected,
        expected,
    ]


def test_workers_that_see_different_checkpoints_are_refused(
    checkpoints, monkeypatch
):
    monkeypatch.setattr(
        distribute, "gather_from_workers", lambda strategy, step: [6, -1]
    )
    with pytest.raises(
        ValueError,
        match=r"different checkpoints in .*\(process 0: ckpt-6, process 1: "
        r"none\).*a file system they all mount",
    ):
        fit_dense(checkpoints)


# --- in-process tests on a small dense model ---------------------------------

DENSE_STEPS_PER_EPOCH = 3
DENSE_EPOCHS = 2


def dense_model(seed=3, units=8):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    return model


def dense_pairs():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((12, 4)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(
        (features, features.sum(axis=1, keepdims=True))
    )


def dense_data():
    return dense_pairs().shuffle(12, seed=1).repeat().batch(2)


def dense_data_of_epoch(epoch):
    return dense_pairs().shuffle(12, seed=1 + epoch).batch(2)


def fit_dense(directory, model=None, make_dataset=dense_data, **kwargs):
    """6 steps: saves at 2, 4 and 6 (1, 1 and 0 steps into epochs 0, 1, 2)."""
    model = model or dense_model()
    options = dict(
        epochs=DENSE_EPOCHS,
        steps_per_epoch=DENSE_STEPS_PER_EPOCH,
        directory=directory,
        save_every_steps=2,
        verbose=0,
    )
    options.update(kwargs)
    history = checkpointing.fit_resumable(model, make_dataset, **options)
    return model, history


@pytest.fixture(scope="module")
def dense_checkpoints(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dense_checkpoints")
    fit_dense(directory)
    keras.backend.clear_session()
    return directory


@pytest.fixture
def checkpoints(dense_checkpoints, tmp_path):
    """A copy of a finished dense run's directory, free to damage."""
    directory = tmp_path / "checkpoints"
    shutil.copytree(dense_checkpoints, directory)
    return directory


def weights_of(model):
    return [variable.numpy() for variable in model.variables]


def truncate_state(folder):
    path = folder / checkpointing.STATE_FILE
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) - 100)


def flip_one_byte_of_state(folder):
    path = folder / checkpointing.STATE_FILE
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))


def delete_manifest(folder):
    (folder / checkpointing.MANIFEST_FILE).unlink()


def garble_manifest(folder):
    (folder / checkpointing.MANIFEST_FILE).write_text('{"format": 1, "st')


CORRUPTIONS = {
    "truncated state": (truncate_state, "bytes"),
    "altered state": (flip_one_byte_of_state, "SHA-256"),
    "missing manifest": (delete_manifest, "never finished"),
    "garbled manifest": (garble_manifest, "does not parse"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_damaged_latest_checkpoint_falls_back_to_previous_with_warning(
    checkpoints, corruption
):
    assert visible_checkpoints(checkpoints) == ["ckpt-4", "ckpt-6"]
    damage, reason = CORRUPTIONS[corruption]
    damage(checkpoints / "ckpt-6")
    with pytest.warns(UserWarning, match=rf"ckpt-6: .*{reason}.*previous"):
        checkpoint = checkpointing.latest_checkpoint(checkpoints)
    assert checkpoint.step == 4
    assert (checkpoint.epoch, checkpoint.step_in_epoch) == (1, 1)


def test_resuming_past_a_damaged_checkpoint_reproduces_the_uninterrupted_run(
    tmp_path, checkpoints
):
    reference, reference_history = fit_dense(tmp_path / "reference")
    truncate_state(checkpoints / "ckpt-6")
    keras.backend.clear_session()
    with pytest.warns(UserWarning, match="ckpt-6"):
        resumed, history = fit_dense(checkpoints)
    assert all(map(np.array_equal, weights_of(resumed), weights_of(reference)))
    assert history.history == reference_history.history
    # The damaged checkpoint was rewritten by the resumed run.
    assert checkpointing.latest_checkpoint(checkpoints).step == 6


class Interrupted(Exception):
    pass


def interrupt_at(step):
    def interrupt():
        raise Interrupted

    return AtStep(step, interrupt)


@pytest.mark.parametrize(
    "per_epoch", [False, True], ids=["one stream", "a dataset per epoch"]
)
def test_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_run(
    tmp_path, per_epoch
):
    options = dict(
        make_dataset=dense_data_of_epoch if per_epoch else dense_data,
        per_epoch=per_epoch,
        epochs=3,
    )
    reference, reference_history = fit_dense(tmp_path / "reference", **options)
    keras.backend.clear_session()
    with pytest.raises(Interrupted):
        fit_dense(tmp_path / "resumed", callbacks=[interrupt_at(5)], **options)
    keras.backend.clear_session()
    # From step 4, one batch into epoch 1: its other two batches, then epoch
    # 2 in a second fit on new datasets. The same global seed as before:
    # TensorFlow pairs it with every shuffle seed.
    resumed, history = fit_dense(tmp_path / "resumed", **options)
    assert all(map(np.array_equal, weights_of(resumed), weights_of(reference)))
    assert history.history == reference_history.history


def test_failed_write_leaves_earlier_checkpoints_valid_and_nothing_half_visible(
    tmp_path, monkeypatch
):
    write_state = checkpointing._write_state
    saves = []

    def fails_on_second_save(path, arrays):
        saves.append(path)
        write_state(path, arrays)
        if len(saves) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(checkpointing, "_write_state", fails_on_second_save)
    with pytest.raises(OSError, match="disk full"):
        fit_dense(tmp_path)
    assert visible_checkpoints(tmp_path) == ["ckpt-2"]
    assert any(name.startswith(".tmp-ckpt-4-") for name in os.listdir(tmp_path))

    monkeypatch.setattr(checkpointing, "_write_state", write_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_dense(tmp_path, model=dense_model())
    assert sorted(os.listdir(tmp_path)) == ["ckpt-4", "ckpt-6"]


def test_completed_run_is_restored_without_training_again(tmp_path):
    trained, history = fit_dense(tmp_path)
    keras.backend.clear_session()
    restored, restored_history = fit_dense(
        tmp_path, model=dense_model(seed=99), callbacks=[interrupt_at(7)]
    )
    assert all(map(np.array_equal, weights_of(restored), weights_of(trained)))
    assert restored_history.history == history.history
    assert restored_history.epoch == [0, 1]
    assert int(restored.optimizer.iterations.numpy()) == 6


def test_more_epochs_continue_from_the_final_checkpoint(tmp_path):
    reference, _ = fit_dense(tmp_path / "reference", epochs=3)
    fit_dense(tmp_path / "resumed", epochs=2)
    keras.backend.clear_session()
    resumed, history = fit_dense(tmp_path / "resumed", epochs=3)
    assert all(map(np.array_equal, weights_of(resumed), weights_of(reference)))
    assert history.epoch == [0, 1, 2]


def test_dropout_seed_states_are_checkpointed_though_not_in_model_weights(
    tmp_path,
):
    trained, _ = fit_dense(tmp_path)
    seed_state = trained.layers[1].seed_generator.state
    # What Keras' own weight files save, and why model.variables is used.
    assert all(weight is not seed_state for weight in trained.weights)
    assert any(variable is seed_state for variable in trained.variables)

    keras.backend.clear_session()
    fresh = dense_model(seed=99)
    assert not np.array_equal(
        fresh.layers[1].seed_generator.state.numpy(), seed_state.numpy()
    )
    checkpointing.latest_checkpoint(tmp_path).restore(fresh)
    np.testing.assert_array_equal(
        fresh.layers[1].seed_generator.state.numpy(), seed_state.numpy()
    )
    assert int(fresh.optimizer.iterations.numpy()) == 6


def random_draws():
    return random.random(), np.random.random(), float(keras.random.uniform(()))


def test_python_numpy_and_global_keras_random_states_are_restored(tmp_path):
    model = dense_model()
    keras.random.uniform(())  # creates Keras' global seed generator
    fit_dense(tmp_path, model=model)
    expected = random_draws()
    keras.backend.clear_session()
    keras.utils.set_random_seed(123)
    keras.random.uniform(())
    checkpointing.latest_checkpoint(tmp_path).restore(dense_model(seed=5))
    assert random_draws() == expected


def test_checkpoint_of_another_steps_per_epoch_is_refused(checkpoints):
    with pytest.raises(ValueError, match=r"steps_per_epoch=3.*steps_per_epoch=4"):
        fit_dense(checkpoints, steps_per_epoch=4)


def test_checkpoint_of_another_model_is_refused(checkpoints):
    with pytest.raises(ValueError, match=r"does not fit this model: model variable 0"):
        fit_dense(checkpoints, model=dense_model(units=5))


def edit_manifest(folder, **changes):
    path = folder / checkpointing.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_edited_manifest_fails_its_checksum_and_is_skipped(checkpoints):
    # Valid JSON, plausible values: only the manifest's checksum catches it.
    edit_manifest(checkpoints / "ckpt-6", epoch=0, history={"loss": [0.0]})
    with pytest.warns(UserWarning, match=r"ckpt-6: .*checksum.*previous"):
        checkpoint = checkpointing.latest_checkpoint(checkpoints)
    assert checkpoint.step == 4


def test_checkpoints_of_a_newer_format_are_refused_and_left_untouched(tmp_path):
    directory = tmp_path / "checkpoints"
    fit_dense(directory, epochs=1)
    for folder in directory.iterdir():
        edit_manifest(folder, format=checkpointing.FORMAT_VERSION + 1)
    before = sorted(path.name for path in directory.rglob("*"))

    with pytest.raises(ValueError, match=r"format 3 by a newer keras_transformer"):
        fit_dense(directory)

    assert sorted(path.name for path in directory.rglob("*")) == before


def test_unreadable_checkpoints_are_set_aside_not_deleted(checkpoints):
    # Resumed from ckpt-4, the run rewrites ckpt-6 and prunes the stale
    # ckpt-10: both unreadable, so both are kept under other names.
    garble_manifest(checkpoints / "ckpt-6")
    shutil.copytree(checkpoints / "ckpt-6", checkpoints / "ckpt-10")
    garbled = (checkpoints / "ckpt-6" / checkpointing.MANIFEST_FILE).read_bytes()

    with pytest.warns(UserWarning, match=r"Kept the unreadable checkpoint"):
        fit_dense(checkpoints)

    assert visible_checkpoints(checkpoints) == ["ckpt-4", "ckpt-6"]
    assert checkpointing.latest_checkpoint(checkpoints).step == 6
    for name in ("unreadable-ckpt-6", "unreadable-ckpt-10"):
        kept = checkpoints / name / checkpointing.MANIFEST_FILE
        assert kept.read_bytes() == garbled


def test_failed_restore_leaves_the_model_and_optimizer_as_they_were(checkpoints):
    model = dense_model(seed=9)
    # Same weights, another optimizer: the model group fits, the optimizer
    # group does not, so nothing may be assigned.
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    before = weights_of(model) + [v.numpy() for v in model.optimizer.variables]
    checkpoint = checkpointing.latest_checkpoint(checkpoints)

    with pytest.raises(ValueError, match=r"optimizer variables"):
        checkpoint.restore(model)

    after = weights_of(model) + [v.numpy() for v in model.optimizer.variables]
    assert all(map(np.array_equal, after, before))


def test_a_file_as_checkpoint_directory_is_refused(tmp_path):
    path = tmp_path / "checkpoints"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match=r"argument directory, expected a folder"):
        fit_dense(path)
    assert path.read_text() == "not a folder"


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("save_every_steps", 0, "save_every_steps, expected a positive integer"),
        ("keep", 0, "keep, expected a positive integer"),
        ("steps_per_epoch", 0, "steps_per_epoch, expected a positive integer"),
        ("epochs", -1, "epochs, expected a non-negative integer"),
        ("initial_epoch", 1, "chooses initial_epoch itself"),
    ],
)
def test_invalid_arguments_raise(tmp_path, argument, value, message):
    with pytest.raises(ValueError, match=message):
        fit_dense(tmp_path, **{argument: value})


def test_a_dataset_object_instead_of_a_function_is_refused(tmp_path):
    with pytest.raises(ValueError, match="make_dataset, expected a function"):
        fit_dense(tmp_path, make_dataset=dense_data())


def test_a_function_returning_no_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must return a tf.data.Dataset"):
        fit_dense(tmp_path, make_dataset=lambda: [1, 2, 3])


def test_uncompiled_model_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="needs a compiled model"):
        checkpointing.fit_resumable(
            model,
            dense_data,
            epochs=1,
            steps_per_epoch=1,
            directory=tmp_path,
            save_every_steps=1,
        )


def test_missing_directory_has_no_checkpoint(tmp_path):
    assert checkpointing.latest_checkpoint(tmp_path / "nowhere") is None


if __name__ == "__main__":
    child_main(sys.argv[1:])
