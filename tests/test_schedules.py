import keras
import numpy as np
import pytest

from keras_transformer import schedules
from tests.conftest import to_numpy


def schedule_of(optimizer):
    return keras.saving.deserialize_keras_object(
        optimizer.get_config()["learning_rate"]
    )


def reference_rate(iterations, d_model, warmup_steps, scale=1.0):
    step = np.asarray(iterations, dtype="float64") + 1.0
    return scale * d_model**-0.5 * np.minimum(step**-0.5, step * warmup_steps**-1.5)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_rate_follows_the_paper_formula_with_step_one_based(scale):
    schedule = schedules.TransformerSchedule(64, warmup_steps=100, scale=scale)
    for iterations in [0, 1, 49, 98, 99, 100, 500, 10_000]:
        np.testing.assert_allclose(
            to_numpy(schedule(iterations)),
            reference_rate(iterations, 64, 100, scale),
            rtol=1e-6,
        )


def test_rate_peaks_when_step_reaches_warmup():
    schedule = schedules.TransformerSchedule(128, warmup_steps=40)
    rates = to_numpy(schedule(np.arange(200)))
    assert int(np.argmax(rates)) == 39  # iterations 39 is step 40.
    np.testing.assert_allclose(rates.max(), (128 * 40) ** -0.5, rtol=1e-6)
    assert np.all(np.diff(rates[:40]) > 0) and np.all(np.diff(rates[40:]) < 0)


def test_config_round_trip_and_serialization():
    schedule = schedules.TransformerSchedule(32, warmup_steps=10, scale=0.5)
    config = schedule.get_config()
    assert config == {"d_model": 32, "warmup_steps": 10, "scale": 0.5}
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert type(restored) is schedules.TransformerSchedule
    assert restored.get_config() == config


def test_transformer_optimizer_uses_the_paper_hyperparameters():
    optimizer = schedules.transformer_optimizer(32, warmup_steps=10, scale=2.0)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.98, 1e-9)
    schedule = schedule_of(optimizer)
    assert isinstance(schedule, schedules.TransformerSchedule)
    assert schedule.get_config() == {"d_model": 32, "warmup_steps": 10, "scale": 2.0}
    np.testing.assert_allclose(
        to_numpy(optimizer.learning_rate), reference_rate(0, 32, 10, 2.0), rtol=1e-6
    )


def test_optimizer_with_schedule_survives_keras_saving(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(
        optimizer=schedules.transformer_optimizer(16, warmup_steps=5), loss="mse"
    )
    model.fit(np.ones((4, 4)), np.zeros((4, 2)), epochs=3, batch_size=2, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    schedule = schedule_of(reloaded.optimizer)
    assert isinstance(schedule, schedules.TransformerSchedule)
    assert schedule.get_config() == {"d_model": 16, "warmup_steps": 5, "scale": 1.0}
    assert int(to_numpy(reloaded.optimizer.iterations)) == 6
    np.testing.assert_allclose(
        to_numpy(reloaded.optimizer.learning_rate), reference_rate(6, 16, 5), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d_model": 0}, "d_model"),
        ({"d_model": 8.0}, "d_model"),
        ({"d_model": 8, "warmup_steps": 0}, "warmup_steps"),
        ({"d_model": 8, "scale": 0.0}, "scale"),
        ({"d_model": 8, "scale": float("inf")}, "scale"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedules.TransformerSchedule(**kwargs)


def reference_warmup_cosine(iterations, peak, warmup, total, first_step=0):
    step = np.asarray(iterations, dtype="float64") - first_step
    rising = peak * (step + 1) / warmup
    progress = np.clip((step - warmup) / max(1, total - warmup), 0, 1)
    return np.where(step < warmup, rising, peak * 0.5 * (1 + np.cos(np.pi * progress)))


def test_warmup_cosine_follows_its_formula_over_a_run_set_later():
    schedule = schedules.WarmupCosineDecay(2e-3)
    # The run unknown: warm-up of 1000 steps, then inverse square root.
    np.testing.assert_allclose(to_numpy(schedule(999)), 2e-3, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(schedule(3999)), 1e-3, rtol=1e-6)
    schedule.set_run(400)
    assert schedule.resolved_warmup_steps() == 20
    for iterations in [0, 10, 19, 20, 100, 399, 400, 1000]:
        np.testing.assert_allclose(
            to_numpy(schedule(iterations)),
            reference_warmup_cosine(iterations, 2e-3, 20, 400),
            rtol=1e-5,
            atol=2e-9,
        )
    # A second run starts at the optimizer's step and warms up again.
    schedule.set_run(100, first_step=400)
    for iterations in [400, 404, 450, 500]:
        np.testing.assert_allclose(
            to_numpy(schedule(iterations)),
            reference_warmup_cosine(iterations, 2e-3, 5, 100, first_step=400),
            rtol=1e-5,
            atol=2e-9,
        )


def test_a_new_run_needs_no_new_trace_of_a_compiled_step():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the run lives in variables on TensorFlow only")
    schedule = schedules.WarmupCosineDecay(1e-2, total_steps=100)
    rate = tf.function(lambda step: schedule(step))
    before = float(rate(tf.constant(50)))
    schedule.set_run(1000)
    assert float(rate(tf.constant(50))) != before
    np.testing.assert_allclose(
        float(rate(tf.constant(50))),
        reference_warmup_cosine(50, 1e-2, 50, 1000),
        rtol=1e-5,
    )
    assert rate.experimental_get_tracing_count() == 1


def test_warmup_cosine_round_trips_and_refuses_a_warmup_longer_than_the_run():
    schedule = schedules.WarmupCosineDecay(1e-3, total_steps=50, warmup_steps=5)
    restored = schedules.WarmupCosineDecay.from_config(schedule.get_config())
    assert restored.get_config() == schedule.get_config()
    assert not restored.follows_fit
    np.testing.assert_allclose(to_numpy(restored(30)), to_numpy(schedule(30)))
    with pytest.raises(ValueError, match="expected at most total_steps="):
        schedules.WarmupCosineDecay(1e-3, total_steps=10, warmup_steps=11)
    for bad, fragment in (
        ({"peak_learning_rate": 0}, "peak_learning_rate"),
        ({"peak_learning_rate": 1e-3, "warmup_fraction": 1.0}, "warmup_fraction"),
        ({"peak_learning_rate": 1e-3, "total_steps": -1}, "total_steps"),
    ):
        with pytest.raises(ValueError, match=f"argument {fragment}"):
            schedules.WarmupCosineDecay(**bad)


@pytest.mark.parametrize("width, expected", [(128, 3e-3), (512, 1.5e-3), (32, 6e-3)])
def test_the_default_peak_rate_shrinks_with_the_square_root_of_the_width(width, expected):
    assert schedules.default_learning_rate(width) == pytest.approx(expected)


@pytest.mark.parametrize(
    "tuned_width, hidden_dim, expected", [(128, 256, 2.5e-3), (128, 128, 5e-3), (128, 32, 2e-2)]
)
def test_a_rate_moved_to_another_width_scales_inversely_with_it(tuned_width, hidden_dim, expected):
    moved = schedules.learning_rate_for_width(5e-3, tuned_width, hidden_dim)
    assert moved == pytest.approx(expected)


def test_a_rate_is_not_moved_to_a_width_that_is_not_a_positive_integer():
    with pytest.raises(ValueError, match="argument hidden_dim, expected a positive integer"):
        schedules.learning_rate_for_width(5e-3, 128, 0)
    with pytest.raises(ValueError, match="argument learning_rate"):
        schedules.learning_rate_for_width(-1.0, 128, 64)
