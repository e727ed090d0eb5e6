"""scripts/benchmark_gpu.py: its smoke run, its fused core and its FLOP count.

The GPU figures themselves come from running the script on the device; here
a tiny model on the CPU checks that every variant trains and is reported (a
missing keras-hub as skipped, with the reason), that the fused attention core
computes what the library's core computes, and that the FLOP count matches
the model's own matmul weights.
"""

import contextlib
import io
import json
import sys

import keras
import numpy as np
import pytest

from keras_transformer import models
from tests.conftest import load_script

benchmark_gpu = load_script("benchmark_gpu")
SHAPE = benchmark_gpu.SMOKE
SOURCE = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]], "int32")
TARGET = np.array([[2, 5, 6, 0, 0, 0], [2, 7, 8, 9, 10, 11]], "int32")


@pytest.mark.slow
def test_smoke_run_reports_every_variant_and_skips_a_missing_keras_hub(
    tmp_path, monkeypatch
):
    # A None entry makes `import keras_hub` fail, as if it were not installed.
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    path = tmp_path / "gpu.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = benchmark_gpu.main(["--smoke", "--warmup", "1", "--output", str(path)])
    assert code == 0
    record = json.loads(path.read_text())
    assert [row["variant"] for row in record["results"]] == ["einsum", "fused"]
    for row in record["results"]:
        assert row["tokens_per_second"] > 0 and 0 < row["mfu"] < 1
    assert "keras_hub does not import" in record["skipped"]["keras_hub"]
    assert record["markdown"] in printed.getvalue()
    assert "| fused |" in record["markdown"]
    assert keras.config.dtype_policy().name == "float32"


def test_the_fused_attention_core_gives_the_einsum_cores_logits():
    config = benchmark_gpu.transformer_config(SHAPE)
    model = models.build_transformer(config)
    inputs = {"source_ids": SOURCE, "target_ids": TARGET}
    expected = keras.ops.convert_to_numpy(model(inputs))
    with benchmark_gpu.fused_attention_core():
        fused = keras.ops.convert_to_numpy(model(inputs))
    # Rows of padding queries attend to nothing; compare the real tokens.
    real = TARGET != 0
    np.testing.assert_allclose(fused[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [8, 32])
def test_flop_count_is_three_times_the_forward_matmuls_of_the_built_model(length):
    shape = benchmark_gpu.Shape(
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=24,
        vocabulary_size=50,
        batch_size=3,
        length=length,
    )
    model = models.build_transformer(benchmark_gpu.transformer_config(shape))
    # Every Dense kernel is used once per token (cross-attention keys and
    # values per source token: as many as target tokens here), plus the
    # tied output projection.
    kernels = sum(
        int(np.prod(weight.shape))
        for weight in model.weights
        if weight.name == "kernel"
    )
    tokens = shape.batch_size * length
    matmuls = 2 * tokens * (kernels + shape.vocabulary_size * shape.hidden_dim)
    # Scores and weighted sums: encoder self, decoder self and cross.
    attention = 3 * shape.num_layers * tokens * 4 * length * shape.hidden_dim
    assert benchmark_gpu.training_flops(shape) == 3 * (matmuls + attention)
