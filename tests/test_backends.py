"""One model, three Keras backends, and a Python without TensorFlow.

Keras fixes its backend once per process, so JAX and PyTorch run in child
processes: `python -m tests.test_backends BACKEND FOLDER` builds the
Transformers below, loads the weights that the test process saved on
TensorFlow (`_child("tensorflow", FOLDER)` saves them), and writes their
logits and greedy ids to `FOLDER/BACKEND.npz`.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import xla_flags_for_tests

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A child imports Keras and its backend, builds and decodes two small models.
CHILD_TIMEOUT = 600

# Learned positions, grouped-query attention and SwiGLU; rotary positions with
# T5 relative bias, post-norm and RMSNorm: between them every layer the
# builder uses.
CONFIGS = {
    "learned-gqa-swiglu": {
        "position_encoding": "learned",
        "num_key_value_heads": 2,
        "activation": "swiglu",
    },
    "relative-post-rms": {
        "position_encoding": "relative",
        "norm_placement": "post",
        "norm_type": "rms_norm",
    },
}
SMALL = {
    "source_vocabulary_size": 40,
    "target_vocabulary_size": 30,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "hidden_dim": 32,
    "num_heads": 4,
    "intermediate_dim": 64,
    "dropout": 0.0,
    "max_source_length": 12,
    "max_target_length": 10,
}
SOURCE_IDS = np.array([[5, 6, 7, 8, 9, 0, 0], [4, 3, 12, 9, 8, 11, 10]], "int32")
TARGET_IDS = np.array([[2, 5, 6, 7, 0, 0], [2, 1, 4, 5, 6, 9]], "int32")
BOS_ID, EOS_ID, MAX_LENGTH = 2, 3, 8

# Meta-path code that makes TensorFlow look uninstalled: `import tensorflow`
# raises ModuleNotFoundError and `importlib.util.find_spec` returns None, as
# in an environment where it was never installed.
HIDE_TENSORFLOW = """
import sys
from importlib.machinery import PathFinder

HIDDEN = {"tensorflow", "tensorflow_text", "tf_keras"}


class _WithoutTensorFlow(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return PathFinder.find_spec(name, path, target)


sys.meta_path[:] = [
    _WithoutTensorFlow if finder is PathFinder else finder
    for finder in sys.meta_path
]
"""


def _installed(module):
    return importlib.util.find_spec(module) is not None


def _run(args, backend, code=None):
    """Runs `python -m tests.test_backends ARGS` (or `python -c CODE`)."""
    if code is None:
        command = [sys.executable, "-m", "tests.test_backends", *args]
    else:
        command = [sys.executable, "-c", code]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={
            **os.environ,
            "KERAS_BACKEND": backend,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # The JAX child compiles ~30% less CPU with the JAX line's flags.
            "XLA_FLAGS": xla_flags_for_tests(backend),
        },
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _needs(module):
    return pytest.mark.skipif(
        not _installed(module), reason=f"{module} is not installed"
    )


@pytest.fixture(scope="module")
def tensorflow_results(tmp_path_factory):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("runs on the TensorFlow line: it saves the shared weights")
    folder = tmp_path_factory.mktemp("backends")
    # This process is the TensorFlow child (a process of its own would cost
    # ~10 CPU-s to import TensorFlow again).
    _child("tensorflow", folder)
    return folder, np.load(folder / "tensorflow.npz")


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [pytest.param("jax", marks=_needs("jax")), pytest.param("torch", marks=_needs("torch"))],
)
def test_tensorflows_weights_give_the_same_logits_and_greedy_ids(
    backend, tensorflow_results
):
    folder, expected = tensorflow_results
    _run([backend, str(folder)], backend)
    results = np.load(folder / f"{backend}.npz")
    for name in CONFIGS:
        # float32 rounding differs with the order of the sums in each
        # backend's matmuls: measured 6e-5 on logits up to 11, so the bound is
        # 1e-5 of the logits' scale (the largest magnitude), not of each one.
        logits = expected[f"{name}/logits"]
        np.testing.assert_allclose(
            results[f"{name}/logits"],
            logits,
            atol=1e-5 * max(1.0, float(np.abs(logits).max())),
            rtol=0,
            err_msg=f"{backend} logits of {name}",
        )
        np.testing.assert_array_equal(
            results[f"{name}/greedy_ids"],
            expected[f"{name}/greedy_ids"],
            err_msg=f"{backend} greedy ids of {name}",
        )
    # Real decodes: tokens change from step to step, and one reaches EOS.
    ids = np.concatenate([expected[f"{name}/greedy_ids"] for name in CONFIGS])
    assert np.any(ids[:, 1:] != ids[:, :-1]) and np.any(ids == EOS_ID), ids


@pytest.mark.slow
@_needs("jax")
def test_layers_model_and_decoding_run_on_jax_without_tensorflow():
    code = HIDE_TENSORFLOW + """
import importlib.util

import numpy as np

assert importlib.util.find_spec("tensorflow") is None
import keras

import keras_transformer
from keras_transformer import decoding, layers, models

block = layers.TransformerEncoderBlock(intermediate_dim=16, num_heads=2)
embedding = layers.TokenAndPositionEmbedding(20, 8, 8, position_encoding="learned")
outputs = block(embedding(np.array([[4, 5, 6, 0]], "int32")))
assert tuple(outputs.shape) == (1, 4, 8), outputs.shape

model = models.build_transformer(models.TransformerConfig(
    source_vocabulary_size=20, target_vocabulary_size=20, num_encoder_layers=1,
    num_decoder_layers=1, hidden_dim=8, num_heads=2, intermediate_dim=16,
    max_source_length=8, max_target_length=8))
ids = decoding.greedy_decode(model, np.array([[4, 5, 6, 0]], "int32"), 6)
assert tuple(ids.shape) == (1, 6), ids.shape

try:
    keras_transformer.data
except ImportError as error:
    print("data:", error)
else:
    raise AssertionError("keras_transformer.data imported without TensorFlow")
try:
    import keras_transformer.translation.export
except ImportError as error:
    print("direct import:", error)
else:
    raise AssertionError("translation.export imported without TensorFlow")
print("backend:", keras.backend.backend())
assert not any(name.startswith("tensorflow") for name in sys.modules)
"""
    output = _run([], "jax", code=code).stdout
    assert "backend: jax" in output
    assert "keras_transformer.data needs TensorFlow" in output
    assert "pip install 'tensorflow>=2.21,<2.22'" in output
    # Imported directly, the module (or the first it needs) says the same.
    assert re.search(r"direct import: keras_transformer\.\w+ needs TensorFlow", output)


def _child(backend, folder):
    """Writes `folder/BACKEND.npz`: logits and greedy ids of every config."""
    import keras

    from keras_transformer import decoding, models

    assert keras.backend.backend() == backend, keras.backend.backend()
    results = {}
    for name, overrides in CONFIGS.items():
        keras.utils.set_random_seed(0)
        model = models.build_transformer(
            models.TransformerConfig(**SMALL, **overrides)
        )
        weights = folder / f"{name}.weights.h5"
        if backend == "tensorflow":
            # Noise on the initial weights spreads the logits, so that the
            # greedy ids change from step to step.
            rng = np.random.default_rng(0)
            model.set_weights(
                [
                    (w + rng.normal(0, 0.5, w.shape)).astype(w.dtype)
                    for w in model.get_weights()
                ]
            )
            model.save_weights(weights)
        else:
            model.load_weights(weights)
        logits = model({"source_ids": SOURCE_IDS, "target_ids": TARGET_IDS})
        ids = decoding.greedy_decode(
            model, SOURCE_IDS, MAX_LENGTH, bos_id=BOS_ID, eos_id=EOS_ID
        )
        results[f"{name}/logits"] = keras.ops.convert_to_numpy(logits)
        results[f"{name}/greedy_ids"] = keras.ops.convert_to_numpy(ids)
    np.savez(folder / f"{backend}.npz", **results)


if __name__ == "__main__":
    _child(sys.argv[1], pathlib.Path(sys.argv[2]))
