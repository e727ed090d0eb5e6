from keras_transformer import layers
from tests.conftest import random_floats, run_layer_test


def test_lora_dense_passes_the_layer_harness(tmp_path):
    run_layer_test(
        layers.LoRADense,
        {"units": 5},
        random_floats(2, 3, 4),
        expected_output_shape=(2, 3, 5),
        tmp_path=tmp_path,
    )
