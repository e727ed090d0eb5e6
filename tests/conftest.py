"""Shared fixtures and the common layer test harness.

`run_layer_test` checks what every layer in the library promises: a config
round trip, eager and symbolic calls that agree on shape, a `.keras` save/load
inside a functional model with identical outputs, one `fit` step, and the
`mixed_float16` / `mixed_bfloat16` policies.
"""

import dataclasses
import gc
import importlib.metadata
import importlib.util
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _threads_per_worker():
    """The cores each pytest-xdist worker may use, or None outside xdist."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        return None
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count()
    return max(1, cores // int(workers))


# PyTorch's CPU kernels start an OpenMP thread per core, so `-n 2` on 2
# cores ran four busy threads: one a worker took the PyTorch line from 56 s
# to 36 s (2 runs each way). TensorFlow's and XLA's pools do not read this
# variable, and limiting them was no faster: with TensorFlow's intra-op pool
# at one thread a worker the slow suite took 534 s against 493 s (its tail,
# one worker alone, then ran on one core), and with XLA's Eigen on one
# thread the JAX line 151 s against 130 s. A value the user set stays.
_THREADS_PER_WORKER = _threads_per_worker()
if _THREADS_PER_WORKER is not None:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS_PER_WORKER))


def _compile_lightly_flags(backend):
    """XLA_FLAGS that compile a test run's tiny programs with less effort.

    XLA's CPU optimisation passes cost more than these programs gain from
    them (test_tpu_path: ~25% less CPU without them). On JAX, which compiles
    every eager op on its first shape, the older CPU emitters also compile
    ~40% faster (the JAX line: 180 s -> 127 s, 285 -> 189 CPU-s); TensorFlow's
    XLA gains nothing from them. An XLA that does not know a flag aborts
    the process, so that one is added only for the jaxlib versions it was
    tried on: a newer one runs slower, never fails. The programs compute
    the same functions. The JAX line also turns off JAX's own passes
    (`lighten_graph_optimizations`).
    """
    flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    if backend == "jax":
        try:
            jaxlib = importlib.metadata.version("jaxlib")
        except importlib.metadata.PackageNotFoundError:
            jaxlib = ""
        if jaxlib.split(".")[:2] == ["0", "10"]:
            flags += " --xla_cpu_use_fusion_emitters=false"
    return flags


# Flags inherited from a parent test process (pytest-xdist's controller, a
# test that starts a child) are ours; any others the user set, and they stay.
_INHERITED_XLA_FLAGS = os.environ.get("XLA_FLAGS")
_USER_XLA_FLAGS = (
    None
    if _INHERITED_XLA_FLAGS
    in {_compile_lightly_flags(backend) for backend in ("tensorflow", "jax", "torch")}
    else _INHERITED_XLA_FLAGS
)


def xla_flags_for_tests(backend):
    """XLA_FLAGS of a test process on `backend` (children inherit them; one
    on another backend than its parent's gets its own: tests/test_backends.py)."""
    return _compile_lightly_flags(backend) if _USER_XLA_FLAGS is None else _USER_XLA_FLAGS


os.environ["XLA_FLAGS"] = xla_flags_for_tests(os.environ["KERAS_BACKEND"])

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402


def lighten_graph_optimizations():
    """Turns off the graph optimisers that a test's tiny programs do not repay.

    On JAX, as XLA_FLAGS above, JAX's own passes: the JAX line takes ~40%
    less CPU (637 s -> 393 s). On TensorFlow, Grappler, which rewrites
    every traced graph on its first run (constant folding, op fusion): the
    slow Translator tests take ~15% less CPU without it (302 s -> 256 s).
    Both compute the same functions without the rewrites. The test
    processes call this at import, and so do the single-process children
    that train in tests/test_checkpointing.py and tests/test_distribute.py.
    Processes that run a script, serve an export or have their logs checked
    (the multi-worker ones: without Grappler oneDNN logs an error-level
    line about int64 that users never see) keep the defaults users get.
    """
    if keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_disable_most_optimizations", True)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


lighten_graph_optimizations()

# Python's cyclic collector walks every live object in each full pass, and a
# test process holds TensorFlow's and Keras' hundreds of thousands: at its
# default thresholds it took ~9% of the fast loop's CPU (20 of ~215 CPU-s,
# ~4,000 collections a worker). Frozen, the objects of the imports are never
# walked again, and collections come ~100x less often: 8 CPU-s, the loop 7%
# less CPU (median of 2 each way). Garbage is still collected, later.
gc.freeze()
gc.set_threshold(50_000, 20, 20)

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
SCRIPTS = pathlib.Path(__file__).parents[1] / "scripts"


def load_script(name):
    """Imports `scripts/<name>.py` as a fresh module (scripts are no package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def usage_error(capsys, entry_point, arguments):
    """Calls a script's `entry_point` (its `main` or `parse_args`) on
    `arguments`, checks it exits the argparse way (status 2) and returns the
    last line it wrote to stderr."""
    with pytest.raises(SystemExit) as error:
        entry_point([str(argument) for argument in arguments])
    stderr = capsys.readouterr().err
    assert error.value.code == 2, stderr
    return stderr.strip().splitlines()[-1]


@pytest.fixture(autouse=True)
def _isolate_keras_state():
    """Each test starts from the same seeds, float32 policy and a clear session.

    `free_memory=False`: Keras' default runs a full `gc.collect()`, 0.2-0.5 s
    of CPU per test once TensorFlow is loaded (minutes over the suite);
    Python's own collector still frees what the tests leave behind.
    """
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)


# Scheduling. `--dist loadfile` runs each file on one worker, and xdist sends
# the files with the most tests first, so a file of one long test (a script
# smoke run) used to start last and keep one worker busy alone at the end.
# Files that take long go first instead, longest first, the rest after them
# by number of tests: the two workers finish together. A stale list costs
# balance, never correctness. CPU seconds measured on 2 cores (2026-12).
LONGEST_FILES = (
    "tests/test_checkpointing.py",  # killed and resumed children: ~150 s
    "tests/test_distribute.py",  # mirrored and two-worker children: ~90 s
    "tests/test_tpu_path.py",  # XLA training, Colab smoke run: ~140 s
    "tests/scripts/test_benchmark.py",  # benchmark smoke run: ~100 s
    "tests/translation/test_translator.py",
    "tests/translation/test_export.py",
    "tests/scripts/test_train.py",
    "tests/test_readme.py",
    "tests/test_hardening.py",
    "tests/scripts/test_benchmark_gpu.py",
    "tests/test_backends.py",
    "tests/data/test_subword.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        # Keep the collection order below (xdist would sort by test count).
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    """Orders whole files: `LONGEST_FILES` first, then by number of tests."""
    by_file = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    rank = {path: index for index, path in enumerate(LONGEST_FILES)}
    order = sorted(
        by_file,
        key=lambda path: (rank.get(path, len(rank)), -len(by_file[path])),
    )
    items[:] = [item for path in order for item in by_file[path]]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_floats(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(
        "float32"
    )


def random_token_ids(batch, length, vocabulary_size, seed=0, padding_id=0):
    """Random ids in [1, vocabulary_size); 0 is reserved for padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary_size, size=(batch, length)).astype("int32")
    if padding_id != 0:
        ids[ids == padding_id] = 1
    return ids


# A training run's record as scripts/train.py writes it (run.json), small:
# what tests/scripts/test_evaluate.py records and test_quality_page.py
# renders.
TINY_RUN_RECORD = {
    "corpus": "four toy pairs",
    "command": "python train.py --tiny",
    "training_seconds": 75.0,
    "cpu_seconds": 140.0,
    "val_bleu": [
        {"epoch": 1, "bleu": 1.5, "training_seconds": 30.0},
        {"epoch": 2, "bleu": 3.0, "training_seconds": 60.0},
    ],
}


def is_png(path):
    """Whether the file at `path` starts with the PNG signature."""
    with open(path, "rb") as file:
        return file.read(8) == b"\x89PNG\r\n\x1a\n"


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


def mean_real_tokens(dataset, num_batches):
    """The real (non-padding) source and label tokens of the first
    `num_batches` batches of a dataset of `(inputs, labels)`, on average."""
    source_tokens = label_tokens = 0
    for inputs, labels in dataset.take(num_batches):
        source_tokens += np.count_nonzero(to_numpy(inputs["source_ids"]))
        label_tokens += np.count_nonzero(to_numpy(labels))
    return source_tokens / num_batches, label_tokens / num_batches


# Backends: the same test files run on TensorFlow, JAX and PyTorch
# (`KERAS_BACKEND=jax python -m pytest tests/layers tests/models`).

BACKEND = keras.backend.backend()


def only_on(*backends, reason):
    """Marks a test that runs only on the named Keras backends, saying why."""
    return pytest.mark.skipif(
        BACKEND not in backends, reason=f"{BACKEND} backend: {reason}"
    )


# PyTorch runs eagerly: torch.compile takes minutes per test, so the tests of
# what a compiled program does run on the other two backends.
compiled_backends = only_on(
    "tensorflow", "jax", reason="no compiled program (PyTorch runs eagerly)"
)


def compile_function(function):
    """`function` compiled as one XLA program, as a decoding loop would be.

    `tf.function(jit_compile=True)` on TensorFlow, `jax.jit` on JAX (mark
    the test `compiled_backends`). The function must not assign Keras
    variables (a jitted JAX function cannot). Its Python body runs once per
    trace on both, so a counter in it counts traces.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    raise NotImplementedError(f"No compiled functions on the {BACKEND} backend.")


def value_and_gradients(function, variables, inputs=(), compiled=False):
    """Gradients of `function(*inputs)` with the backend's own autodiff.

    `tf.GradientTape` on TensorFlow, `jax.value_and_grad` over the variables'
    values (a `keras.StatelessScope`, so variable updates inside the call,
    such as dropout seeds, are dropped) on JAX, `torch.autograd.grad` on
    PyTorch.

    Args:
        function: takes the tensors of `inputs`; returns a scalar loss or a
            tuple `(loss, aux)` of a scalar loss and any other outputs.
        variables: Keras variables to differentiate, e.g.
            `layer.trainable_variables`.
        inputs: arrays to pass to `function` and differentiate.
        compiled: trace the whole computation into one program
            (`tf.function`, `jax.jit`); ignored on PyTorch.

    Returns:
        `(aux, gradients)`: `aux` as `function` returned it (None when it
        returned a loss alone) and one gradient per variable then per input,
        zeros where the loss does not depend on it.
    """
    variables = list(variables)

    def split(result):
        return result if isinstance(result, tuple) else (result, None)

    if BACKEND == "tensorflow":
        import tensorflow as tf

        def compute(*tensors):
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                loss, aux = split(function(*tensors))
            targets = [*variables, *tensors]
            gradients = tape.gradient(
                loss, targets, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return aux, gradients

        tensors = [tf.convert_to_tensor(value) for value in inputs]
        return (tf.function(compute) if compiled else compute)(*tensors)
    if BACKEND == "jax":
        import jax

        def pure(values, tensors):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return split(function(*tensors))

        gradient_fn = jax.value_and_grad(pure, argnums=(0, 1), has_aux=True)
        if compiled:
            gradient_fn = jax.jit(gradient_fn)
        tensors = tuple(ops.convert_to_tensor(value) for value in inputs)
        (_, aux), (variable_grads, input_grads) = gradient_fn(
            [variable.value for variable in variables], tensors
        )
        return aux, [*variable_grads, *input_grads]
    if BACKEND == "torch":
        import torch

        tensors = [
            ops.convert_to_tensor(value).detach().requires_grad_()
            for value in inputs
        ]
        loss, aux = split(function(*tensors))
        targets = [variable.value for variable in variables] + tensors
        gradients = torch.autograd.grad(loss, targets, allow_unused=True)
        return aux, [
            torch.zeros_like(target) if gradient is None else gradient
            for gradient, target in zip(gradients, targets)
        ]
    raise NotImplementedError(f"No gradients on the {BACKEND} backend.")


def _as_call(input_data):
    """Splits test inputs into positional and keyword call arguments."""
    if isinstance(input_data, dict):
        return (), dict(input_data)
    if isinstance(input_data, (list, tuple)):
        return tuple(input_data), {}
    return (input_data,), {}


def _first_output(outputs):
    while isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    return outputs


def _flat_outputs(outputs):
    return keras.tree.flatten(outputs)


def _symbolic_inputs(args, kwargs):
    def to_input(name, value):
        value = np.asarray(value)
        return keras.Input(
            shape=value.shape[1:], batch_size=None, dtype=str(value.dtype), name=name
        )

    sym_args = tuple(to_input(f"arg_{i}", v) for i, v in enumerate(args))
    sym_kwargs = {name: to_input(name, v) for name, v in kwargs.items()}
    return sym_args, sym_kwargs


def _functional_model(layer, args, kwargs, call_kwargs):
    sym_args, sym_kwargs = _symbolic_inputs(args, kwargs)
    outputs = layer(*sym_args, **sym_kwargs, **call_kwargs)
    inputs = list(sym_args) + list(sym_kwargs.values())
    return keras.Model(inputs, outputs), [np.asarray(a) for a in args] + [
        np.asarray(v) for v in kwargs.values()
    ]


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    call_kwargs=None,
    expected_output_shape=None,
    expected_output_dtype=None,
    run_training=True,
    run_mixed_precision=True,
    run_saving=True,
    tmp_path=None,
    atol=1e-6,
):
    """Runs the checks every layer in this library must pass.

    Args:
        layer_cls: the layer class under test.
        init_kwargs: dict of constructor arguments.
        input_data: a NumPy array (first positional argument), a tuple of
            arrays (positional arguments) or a dict of arrays (keyword tensor
            arguments). The first axis of every array is the batch axis.
        call_kwargs: dict of non-tensor call arguments (flags).
        expected_output_shape: shape of the first output, or None to skip.
        expected_output_dtype: dtype of the first output under a mixed policy;
            defaults to the policy's compute dtype.
        run_training: run one `fit` step on the first output.
        run_mixed_precision: check `mixed_float16` and `mixed_bfloat16`.
        run_saving: save and reload a functional model as `.keras`.
        tmp_path: folder for the `.keras` file (pytest's `tmp_path`).
    """
    call_kwargs = dict(call_kwargs or {})
    args, kwargs = _as_call(input_data)

    # Config round trip: from_config(get_config()) rebuilds an equal config.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(restored) is layer_cls

    # Eager call.
    eager_outputs = layer(*args, **kwargs, **call_kwargs)
    eager_first = to_numpy(_first_output(eager_outputs))
    if expected_output_shape is not None:
        assert tuple(eager_first.shape) == tuple(expected_output_shape)
    for value in _flat_outputs(eager_outputs):
        value = to_numpy(value)
        if np.issubdtype(value.dtype, np.floating):
            assert np.all(np.isfinite(value)), "eager output is not finite"

    # Symbolic call in a functional model agrees with the eager call.
    symbolic_layer = layer_cls(**init_kwargs)
    model, model_inputs = _functional_model(
        symbolic_layer, args, kwargs, call_kwargs
    )
    symbolic_shapes = [tuple(t.shape) for t in _flat_outputs(model.outputs)]
    eager_shapes = [tuple(to_numpy(v).shape) for v in _flat_outputs(eager_outputs)]
    assert len(symbolic_shapes) == len(eager_shapes)
    for symbolic, eager in zip(symbolic_shapes, eager_shapes):
        assert len(symbolic) == len(eager)
        for sym_dim, eager_dim in zip(symbolic, eager):
            assert sym_dim is None or sym_dim == eager_dim, (symbolic, eager)
    model_outputs = model.predict(model_inputs, verbose=0)

    if run_saving:
        if tmp_path is None:
            raise ValueError("run_saving=True needs tmp_path.")
        path = os.path.join(str(tmp_path), f"{layer_cls.__name__}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        reloaded_outputs = reloaded.predict(model_inputs, verbose=0)
        for before, after in zip(
            _flat_outputs(model_outputs), _flat_outputs(reloaded_outputs)
        ):
            np.testing.assert_allclose(
                np.asarray(before), np.asarray(after), atol=atol, rtol=0
            )

    if run_training:
        train_layer = layer_cls(**init_kwargs)
        train_model, train_inputs = _functional_model(
            train_layer, args, kwargs, call_kwargs
        )
        first = _first_output(train_model.outputs)
        train_model = keras.Model(train_model.inputs, first)
        target = np.zeros(
            (train_inputs[0].shape[0],) + tuple(first.shape[1:]), dtype="float32"
        )
        train_model.compile(optimizer="sgd", loss="mse")
        before = [to_numpy(w).copy() for w in train_model.trainable_weights]
        history = train_model.fit(
            train_inputs, target, batch_size=train_inputs[0].shape[0], verbose=0
        )
        assert np.isfinite(history.history["loss"][0])
        after = [to_numpy(w) for w in train_model.trainable_weights]
        assert any(
            not np.array_equal(b, a) for b, a in zip(before, after)
        ), "one fit step changed no trainable weight"

    if run_mixed_precision:
        for policy in MIXED_POLICIES:
            mixed_layer = layer_cls(**{**init_kwargs, "dtype": policy})
            outputs = mixed_layer(*args, **kwargs, **call_kwargs)
            first = _first_output(outputs)
            expected = expected_output_dtype or keras.DTypePolicy(policy).compute_dtype
            assert keras.backend.standardize_dtype(first.dtype) == expected, (
                policy,
                first.dtype,
            )
            for value in _flat_outputs(outputs):
                value = ops.convert_to_numpy(ops.cast(value, "float32"))
                assert np.all(np.isfinite(value)), f"{policy} output is not finite"
            for weight in mixed_layer.weights:
                assert keras.backend.standardize_dtype(weight.dtype) in (
                    "float32",
                    "int32",
                    "int64",
                    "bool",
                ), f"{weight.path} stored as {weight.dtype} under {policy}"

    return eager_outputs


# A subprocess imports TensorFlow and loads a SavedModel or model: ~10 s of
# CPU, but minutes of wall time on a machine shared by busy processes. Only
# a guard against a hang.
SUBPROCESS_TIMEOUT = 600


def save_then_fail_a_second_save(model, folder, monkeypatch):
    """Saves `model` into `folder`, then fails a second save mid-write.

    Keras writes a `.keras` file's config first, then each layer's
    variables; the second save fails at the padding mask's. Asserts the
    first file is left byte for byte and alone in `folder`; returns its path.
    """
    from keras_transformer.models import transformer

    path = str(folder / "model.keras")
    model.save(path)
    with open(path, "rb") as file:
        before = file.read()

    def failing(self, store):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(transformer.PaddingMask, "save_own_variables", failing)
        with pytest.raises(OSError, match="disk full"):
            model.save(path)
    with open(path, "rb") as file:
        assert file.read() == before
    assert os.listdir(folder) == ["model.keras"]
    return path


def run_python(code, *args):
    """Runs `code` in a fresh Python process; returns the CompletedProcess.

    Each process costs ~10 s of CPU to import TensorFlow: run every check
    that needs a fresh process in one call where the checks allow it.
    """
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def shared_between_workers(tmp_path_factory, name, build, load):
    """A session fixture's value, built once per test run, not once per worker.

    The first xdist worker to ask calls `build(folder)`, which writes what
    the others need into `folder` and returns the value; the other workers
    wait for it and call `load(folder)`. Without xdist (or without
    `fcntl`, on Windows) every process builds its own. Loading a trained
    model costs a second or two where training and exporting it cost 20-40 s
    of CPU, and every worker then holds bit-identical weights.
    """
    import shutil

    try:
        import fcntl
    except ImportError:
        fcntl = None
    root = tmp_path_factory.getbasetemp()
    if fcntl is None or "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    root = root.parent  # the run's folder, above each worker's own
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return load(folder)
        # Left half-written by a worker whose build failed: build afresh
        # (and fail here with this worker's own error, if it fails again).
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        value = build(folder)
        done.touch()
        return value


# A trained tiny translator with two named LoRA adapters, shared by the
# adapter tests of tests/translation/test_adapters.py and
# tests/translation/test_export.py.
ADAPTER_TEXTS = ["5 March 2021", "17 May 2020", "1 June 1999", "3 April 2000",
                 "28 August 1987", "9 December 2012"]  # fmt: skip


def _day_month_year(iso):
    year, month, day = iso.split("-")
    return f"{day}-{month}-{year}"


@pytest.fixture(scope="session")
def adapted(tmp_path_factory):
    """`SimpleNamespace(translator, base_path, base_logits, inputs, ...)`.

    The translator learned the date task briefly (ISO dates), then two
    adapters on shifted domains of the same characters: "dmy" writes
    day-month-year, "rev" writes the ISO date backwards. No adapter is
    active; tests that activate one go through `adapter_translator`, which
    deactivates it again. `base_path` holds the base before any adapter,
    `base_logits` its logits on `inputs`. Trained once per run: other
    workers load the trained translator (`shared_between_workers`).
    """
    import json
    import types

    from keras_transformer import data
    from keras_transformer.translation import Translator, adapters

    pairs = data.generate_date_pairs(96, seed=5)
    sources = [source for source, _ in pairs]
    targets = [target for _, target in pairs]
    domains = {
        "dmy": [_day_month_year(target) for target in targets],
        "rev": [target[::-1] for target in targets],
    }

    def inputs_of(translator):
        source_ids = translator.source_tokenizer.tokenize(ADAPTER_TEXTS).to_tensor()
        return {
            "source_ids": source_ids.numpy(),
            "target_ids": np.tile(
                np.arange(1, 9, dtype="int32"), (len(ADAPTER_TEXTS), 1)
            ),
        }

    def build(folder):
        keras.utils.set_random_seed(11)
        translator = Translator.from_texts(
            sources + ADAPTER_TEXTS, targets + ["2021-03-05"] * len(ADAPTER_TEXTS),
            tokenizer="character", num_encoder_layers=1, num_decoder_layers=1,
            hidden_dim=16, num_heads=2, intermediate_dim=32, dropout=0.0,
        )  # fmt: skip
        translator.compile(learning_rate=1e-2, warmup_steps=5)
        translator.fit(sources, targets, epochs=6, batch_size=16, verbose=0)
        translator.save(str(folder / "base.keras"))
        base_logits = to_numpy(translator(inputs_of(translator), training=False))
        np.save(folder / "base_logits.npy", base_logits)
        (folder / "base_translations.json").write_text(
            json.dumps(translator.translate(ADAPTER_TEXTS))
        )
        for name, shifted in domains.items():
            adapters.train_adapter(
                translator, name, sources, shifted, rank=4, alpha=8, epochs=4,
                batch_size=16, learning_rate=2e-2, warmup_steps=2, verbose=0,
            )  # fmt: skip
        translator.set_adapter(None)
        translator.save(str(folder / "adapted.keras"))
        return described(translator, folder)

    def load(folder):
        return described(keras.saving.load_model(folder / "adapted.keras"), folder)

    def described(translator, folder):
        return types.SimpleNamespace(
            translator=translator,
            base_path=str(folder / "base.keras"),
            inputs=inputs_of(translator),
            base_logits=np.load(folder / "base_logits.npy"),
            base_translations=json.loads(
                (folder / "base_translations.json").read_text()
            ),
            texts=ADAPTER_TEXTS,
            sources=sources,
            domains=domains,
        )

    return shared_between_workers(tmp_path_factory, "adapted", build, load)


@pytest.fixture(scope="session")
def adapter_export(adapted, tmp_path_factory):
    """The adapted translator's export with every adapter (version folder),
    written once per run (`shared_between_workers`)."""

    def version_folder(folder):
        return os.path.join(folder, "multi", "1")

    def build(folder):
        written = adapted.translator.export(str(folder / "multi"))
        assert written == version_folder(folder), written
        return written

    return shared_between_workers(tmp_path_factory, "adapter_export", build, version_folder)


def in_memory(translator, texts, names):
    """Each text translated alone by the translator with its adapter active."""
    translations = {}
    for name in dict.fromkeys(names):
        translator.set_adapter(name or None)
        for index, (text, owner) in enumerate(zip(texts, names)):
            if owner == name:
                translations[index] = translator.translate([text])[0]
    translator.set_adapter(None)
    return [translations[index] for index in range(len(texts))]


@pytest.fixture
def adapter_translator(adapted):
    """The shared adapted translator, with no adapter active afterwards."""
    yield adapted.translator
    adapted.translator.set_adapter(None)


# --- One trained and exported tiny date translator for the run --------------
#
# Training and exporting take ~20 s of CPU, so every file that serves,
# exports or reloads a trained model shares this one
# (tests/translation/test_export.py, tests/scripts/test_serve.py), built by
# one worker and loaded by the other (`shared_between_workers`).

DATE_SOURCES = ["5 March 2021", "17 May 2020", "1 June 1999"]
DATE_TARGETS = ["2021-03-05", "2020-05-17", "1999-06-01"]
DATE_MAX_SOURCE_LENGTH = 12
DATE_MAX_TARGET_LENGTH = 11
EXPORT_BEAM_SIZE = 3
EXPORT_LENGTH_PENALTY = 0.6


@dataclasses.dataclass
class ExportedTranslator:
    """A trained model, its tokenizers and the folder it was exported to."""

    model: keras.Model
    source_tokenizer: object
    target_tokenizer: object
    export_dir: str


def build_dates_model():
    """An untrained one-layer model sized for the date texts, seeded.

    Returns (model, source tokenizer, target tokenizer): character
    tokenizers of `DATE_SOURCES` and `DATE_TARGETS`, hidden size 16, no
    dropout, `DATE_MAX_SOURCE_LENGTH` and `DATE_MAX_TARGET_LENGTH`.
    """
    from keras_transformer import data, models

    source_tokenizer = data.CharacterTokenizer.from_texts(DATE_SOURCES)
    target_tokenizer = data.CharacterTokenizer.from_texts(DATE_TARGETS)
    keras.utils.set_random_seed(7)
    config = models.TransformerConfig(
        source_vocabulary_size=source_tokenizer.vocabulary_size,
        target_vocabulary_size=target_tokenizer.vocabulary_size,
        num_encoder_layers=1,
        num_decoder_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.0,
        max_source_length=DATE_MAX_SOURCE_LENGTH,
        max_target_length=DATE_MAX_TARGET_LENGTH,
    )
    return models.build_transformer(config), source_tokenizer, target_tokenizer


def _train_briefly(model, source_tokenizer, target_tokenizer, steps=60):
    """Enough steps for varied translations that end with EOS."""
    from keras_transformer import data, losses

    inputs, labels = next(
        iter(
            data.make_translation_dataset(
                DATE_SOURCES,
                DATE_TARGETS,
                source_tokenizer,
                target_tokenizer,
                batch_size=len(DATE_SOURCES),
                shuffle=False,
            )
        )
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=losses.MaskedSparseCategoricalCrossentropy(),
    )
    for _ in range(steps):
        model.train_on_batch(inputs, labels)


@pytest.fixture(scope="session")
def exported_translator(tmp_path_factory):
    """`build_dates_model` trained briefly and exported once per run.

    Exported with `export_translator(..., beam_size=EXPORT_BEAM_SIZE,
    length_penalty=EXPORT_LENGTH_PENALTY)` into a folder whose two parents
    did not exist (export_translator creates them). Returns an
    `ExportedTranslator`; treat it as read-only (copy the export folder
    before changing it).
    """
    from keras_transformer import data
    from keras_transformer.translation import export

    def build(folder):
        model, source_tokenizer, target_tokenizer = build_dates_model()
        _train_briefly(model, source_tokenizer, target_tokenizer)
        export_dir = str(folder / "saved" / "dates")
        returned = export.export_translator(
            model,
            source_tokenizer,
            target_tokenizer,
            export_dir,
            beam_size=EXPORT_BEAM_SIZE,
            length_penalty=EXPORT_LENGTH_PENALTY,
        )
        assert returned == export_dir
        model.save(str(folder / "model.keras"))
        return ExportedTranslator(model, source_tokenizer, target_tokenizer, export_dir)

    def load(folder):
        # The tokenizers are a function of the texts: made again, the same.
        return ExportedTranslator(
            keras.saving.load_model(folder / "model.keras"),
            data.CharacterTokenizer.from_texts(DATE_SOURCES),
            data.CharacterTokenizer.from_texts(DATE_TARGETS),
            str(folder / "saved" / "dates"),
        )

    return shared_between_workers(tmp_path_factory, "exported_translator", build, load)
