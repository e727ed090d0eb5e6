import keras
import numpy as np
import pytest
import sacrebleu

from keras_transformer import callbacks

SOURCES = ["eins", "zwei", "drei", "vier"]
REFERENCES = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "two men are playing football",
    "the woman reads a book",
]
# What a translator might produce: some right, some partly, some wrong.
HYPOTHESES = {
    "eins": "the cat sat on the mat",
    "zwei": "a dog runs in a park",
    "drei": "Two men play football",
    "vier": "nothing alike here",
}


def fake_translate(texts):
    return [HYPOTHESES[text] for text in texts]


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    # Eagerly: a few steps, where tracing would cost more than running.
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=True)
    return model


def fit(model, epochs, callback_list, steps=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8 * steps, 3)).astype("float32")
    y = rng.standard_normal((8 * steps, 2)).astype("float32")
    return model.fit(
        x, y, batch_size=8, epochs=epochs, callbacks=callback_list, verbose=0
    )


class WeightRecorder(keras.callbacks.Callback):
    """Copies the weights after every step and every epoch."""

    def __init__(self):
        super().__init__()
        self.after_steps, self.after_epochs = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.after_steps.append(self.model.get_weights())

    def on_epoch_end(self, epoch, logs=None):
        self.after_epochs.append(self.model.get_weights())


def numpy_mean(weight_lists):
    return [np.mean(np.stack(group), axis=0) for group in zip(*weight_lists)]


def assert_weights_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)


def test_bleu_is_logged_into_history_every_n_epochs_and_after_the_last():
    bleu = callbacks.BleuEvaluation(
        fake_translate, SOURCES, REFERENCES, every_n_epochs=2
    )
    history = fit(tiny_model(), epochs=5, callback_list=[bleu])
    expected = sacrebleu.corpus_bleu(fake_translate(SOURCES), [REFERENCES]).score
    assert history.history["val_bleu"] == pytest.approx([expected] * 3)
    assert 0 < expected < 100
    assert [score["epoch"] for score in bleu.scores] == [2, 4, 5]
    times = [score["training_seconds"] for score in bleu.scores]
    assert times == sorted(times) and times[0] > 0


def test_lowercased_bleu_ignores_case_under_its_own_name():
    bleu = callbacks.BleuEvaluation(
        fake_translate, SOURCES, REFERENCES, lowercase=True, name="val_bleu_lc"
    )
    history = fit(tiny_model(), epochs=1, callback_list=[bleu])
    expected = sacrebleu.corpus_bleu(
        fake_translate(SOURCES), [REFERENCES], lowercase=True
    ).score
    assert history.history["val_bleu_lc"] == pytest.approx([expected])
    assert expected > sacrebleu.corpus_bleu(fake_translate(SOURCES), [REFERENCES]).score


def test_bleu_of_a_perfect_decoder_is_100():
    perfect = dict(zip(SOURCES, REFERENCES))
    bleu = callbacks.BleuEvaluation(
        lambda texts: [perfect[t] for t in texts], SOURCES, REFERENCES
    )
    assert bleu.evaluate() == pytest.approx(100.0)


def test_a_decode_function_returning_the_wrong_count_is_reported():
    bleu = callbacks.BleuEvaluation(lambda texts: texts[:-1], SOURCES, REFERENCES)
    with pytest.raises(ValueError, match="must return 4 strings"):
        bleu.evaluate()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decode_fn": "translate"}, "argument decode_fn"),
        ({"sources": "eins"}, "argument sources"),
        ({"references": [1, 2, 3, 4]}, "argument references"),
        ({"references": None}, "argument references"),
        ({"sources": None}, "argument sources"),
        ({"sources": 42}, "argument sources"),
        ({"references": REFERENCES[:3]}, "4 sources and 3 references"),
        ({"sources": [], "references": []}, "argument sources"),
        ({"every_n_epochs": 0}, "argument every_n_epochs"),
        ({"lowercase": 1}, "argument lowercase"),
        ({"name": ""}, "argument name"),
    ],
)
def test_bleu_evaluation_rejects_bad_arguments(kwargs, match):
    arguments = {
        "decode_fn": fake_translate,
        "sources": SOURCES,
        "references": REFERENCES,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        callbacks.BleuEvaluation(**arguments)


def test_average_weights_equals_the_numpy_mean(rng):
    lists = [
        [
            rng.standard_normal((3, 4)).astype("float32"),
            rng.standard_normal(4).astype("float16"),
            np.array(step, dtype="int64"),
        ]
        for step in range(5)
    ]
    averaged = callbacks.average_weights(lists)
    expected = numpy_mean([[w.astype("float64") for w in weights] for weights in lists])
    np.testing.assert_allclose(averaged[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(averaged[1], expected[1], rtol=1e-3)
    assert [w.dtype for w in averaged] == ["float32", "float16", "int64"]
    # A counter is not averaged: the last value stands.
    assert averaged[2] == 4


@pytest.mark.parametrize(
    "weight_lists, match",
    [
        ([], "non-empty list"),
        ([[np.zeros(2)], [np.zeros(3)]], r"weight_lists\[0\] has shapes \[\(2,\)\]"),
    ],
)
def test_average_weights_rejects_empty_and_mismatched_lists(weight_lists, match):
    with pytest.raises(ValueError, match=match):
        callbacks.average_weights(weight_lists)


def test_averaging_leaves_the_mean_of_the_last_epochs():
    recorder = WeightRecorder()
    averaging = callbacks.CheckpointAveraging(num_checkpoints=3)
    model = tiny_model()
    fit(model, epochs=5, callback_list=[recorder, averaging])
    assert len(averaging.snapshots) == 3
    assert_weights_close(model.get_weights(), numpy_mean(recorder.after_epochs[-3:]))


def test_averaging_every_n_steps_uses_the_last_snapshots_across_epochs():
    recorder = WeightRecorder()
    averaging = callbacks.CheckpointAveraging(num_checkpoints=4, every_n_steps=3)
    model = tiny_model()
    fit(model, epochs=3, callback_list=[recorder, averaging], steps=4)
    # 12 steps: snapshots after steps 3, 6, 9 and 12.
    expected = numpy_mean([recorder.after_steps[i - 1] for i in (3, 6, 9, 12)])
    assert_weights_close(model.get_weights(), expected)


def test_a_run_shorter_than_the_window_averages_what_it_has():
    recorder = WeightRecorder()
    model = tiny_model()
    fit(model, 2, [recorder, callbacks.CheckpointAveraging(num_checkpoints=10)])
    assert_weights_close(model.get_weights(), numpy_mean(recorder.after_epochs))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_checkpoints": 0}, "argument num_checkpoints"),
        ({"every_n_steps": 0}, "argument every_n_steps"),
        ({"every_n_steps": 2.5}, "argument every_n_steps"),
    ],
)
def test_checkpoint_averaging_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        callbacks.CheckpointAveraging(**kwargs)


class FakeClock:
    """A clock that moves only when the test says: `seconds_per_step` at
    each training step (a list: one value per step, the last repeated),
    `epoch_end_seconds` at each epoch's end (validation, say)."""

    def __init__(self, seconds_per_step, epoch_end_seconds=0.0):
        self.now = 0.0
        self.seconds_per_step = list(seconds_per_step)
        self.epoch_end_seconds = epoch_end_seconds

    def __call__(self):
        return self.now


class AdvanceClock(keras.callbacks.Callback):
    """Moves a `FakeClock` as steps and epochs end (listed before the
    budget, so the budget reads the clock after the step's time passed)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.step = 0

    def on_train_batch_end(self, batch, logs=None):
        durations = self.clock.seconds_per_step
        self.clock.now += durations[min(self.step, len(durations) - 1)]
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += self.clock.epoch_end_seconds


class LearningRates(keras.callbacks.Callback):
    """The learning rate each step applied."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


def budget_run(clock, seconds, schedule=None, epochs=100, steps=4):
    model = tiny_model()
    # Traced: runs of a few hundred steps.
    model.compile(
        optimizer=keras.optimizers.SGD(schedule or 0.1), loss="mse", run_eagerly=False
    )
    budget = callbacks.TimeBudget(seconds, schedule, clock=clock)
    rates = LearningRates()
    fit(model, epochs, [rates, AdvanceClock(clock), budget], steps=steps)
    return model, budget, rates.rates


def test_a_time_budget_stops_at_the_last_step_that_lets_fit_end_within_it():
    # One second a step, four steps an epoch: the tenth step ends the budget.
    clock = FakeClock([1.0])
    model, budget, _ = budget_run(clock, seconds=10)
    assert int(model.optimizer.iterations) == 10
    assert (budget.steps, budget.elapsed) == (10, 10.0)


def test_a_time_budget_counts_the_time_between_epochs_and_ends_fit_within_it():
    from keras_transformer import schedules

    # One second a step, ten steps an epoch, ten seconds of "validation"
    # after each epoch: twenty seconds an epoch, so 400 seconds hold 20
    # epochs, the last one's end included.
    schedule = schedules.WarmupCosineDecay(0.1)
    clock = FakeClock([1.0], epoch_end_seconds=10.0)
    model, budget, _ = budget_run(clock, seconds=400, schedule=schedule, steps=10)
    assert int(model.optimizer.iterations) == 200
    assert (budget.elapsed, budget.epoch_end_seconds) == (400.0, 10.0)
    # Every estimate set the time between epochs aside: the schedule ends
    # where the run did.
    assert schedule.total_steps == 200


def test_a_time_budget_stops_before_an_epoch_end_that_would_outlast_it():
    # Stopping after step 28 (the seventh epoch's last, at 88 s) ends fit at
    # 98 s; one more step would end it at 109 s.
    clock = FakeClock([1.0], epoch_end_seconds=10.0)
    model, budget, _ = budget_run(clock, seconds=100)
    assert int(model.optimizer.iterations) == 28
    assert budget.elapsed == 98.0


def test_a_time_budget_counts_from_the_start_it_is_given():
    # 5 seconds spent before training (tokenizing, say) leave 5 steps.
    clock = FakeClock([1.0])
    clock.now = 5.0
    model = tiny_model()
    budget = callbacks.TimeBudget(10, clock=clock, started_at=0.0)
    fit(model, 100, [AdvanceClock(clock), budget])
    assert int(model.optimizer.iterations) == 5
    assert budget.elapsed == 10.0


def test_a_time_budget_fits_the_schedule_so_the_rate_reaches_zero_as_it_ends():
    from keras_transformer import schedules

    schedule = schedules.WarmupCosineDecay(0.1, warmup_fraction=0.4)
    clock = FakeClock([1.0])
    model, _, rates = budget_run(clock, seconds=100, schedule=schedule, steps=25)
    assert int(model.optimizer.iterations) == 100
    # From the first estimate (step 30) on, the run is the 100 steps the
    # budget holds: 40 of warm-up, then a cosine to 0 (NumPy reference).
    assert (schedule.total_steps, schedule.resolved_warmup_steps()) == (100, 40)
    steps = np.arange(30, 100)
    expected = np.where(
        steps < 40,
        0.1 * (steps + 1) / 40,
        0.1 * 0.5 * (1 + np.cos(np.pi * (steps - 40) / 60)),
    )
    np.testing.assert_allclose(rates[30:], expected, rtol=1e-5, atol=1e-7)
    assert rates[-1] < 0.001
    # Before it, the run fit gave the schedule was kept (unknown here: the
    # rise of its warm-up of 1000 steps).
    np.testing.assert_allclose(rates[:30], 0.1 * (np.arange(30) + 1) / 1000, rtol=1e-5)


@pytest.mark.parametrize(
    "compilations, seconds, steps",
    [
        # Three 30-second steps, then 1 second a step: 90 s, then 110 steps
        # of the remaining 110 s.
        ([30.0] * 3, 200, 113),
        # XLA's eight bucket shapes first: 160 s, then 240 steps.
        ([20.0] * 8, 400, 248),
    ],
)
def test_steps_that_compile_do_not_shorten_the_estimated_run(compilations, seconds, steps):
    from keras_transformer import schedules

    schedule = schedules.WarmupCosineDecay(0.1)
    clock = FakeClock([*compilations, 1.0])
    model, _, rates = budget_run(clock, seconds=seconds, schedule=schedule, steps=50)
    assert int(model.optimizer.iterations) == steps
    assert schedule.total_steps == steps
    # The first estimate comes after the compilations: no early jump of the
    # rate towards its peak.
    assert max(rates[:30]) < 0.1 * 30 / 1000 + 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seconds": 0}, "argument seconds"),
        ({"seconds": float("nan")}, "argument seconds"),
        ({"seconds": 10, "schedule": 1e-3}, "argument schedule"),
        ({"seconds": 10, "clock": 3.0}, "argument clock"),
        ({"seconds": 10, "started_at": "now"}, "argument started_at"),
        ({"seconds": 10, "started_at": float("nan")}, "argument started_at"),
    ],
)
def test_time_budget_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        callbacks.TimeBudget(**kwargs)


class StopAfter(keras.callbacks.Callback):
    """Stops training after `steps` steps, mid-epoch."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done == self.steps:
            self.model.stop_training = True


def test_training_speed_counts_the_tokens_of_the_steps_an_epoch_made():
    speed = callbacks.TrainingSpeed(source_tokens=400, target_tokens=800)
    # Four steps an epoch; stopped after two steps of the second.
    fit(tiny_model(), 3, [speed, StopAfter(6)], steps=4)
    full, cut = speed.epochs
    assert (full["steps"], cut["steps"]) == (4, 2)
    for record, share in ((full, 1.0), (cut, 0.5)):
        seconds = record["training_seconds"]
        assert record["source_tokens_per_second"] * seconds == pytest.approx(400 * share)
        assert record["target_tokens_per_second"] * seconds == pytest.approx(800 * share)
