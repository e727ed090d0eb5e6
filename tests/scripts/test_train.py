"""scripts/train.py: a tiny end-to-end run, its artifacts and its errors.

The full default run (about 99.9% held-out exact match on the date task in
1-3 minutes of CPU) is too slow for the suite; these runs train for one
epoch on a few hundred pairs and check the plumbing, not the accuracy.
"""

import contextlib
import glob
import io
import json
import re

import pytest
import tensorflow as tf

from keras_transformer import evaluation
from keras_transformer.translation import export, recipes
from tests.conftest import SCRIPTS, is_png, load_script
from tests.conftest import usage_error as script_usage_error

TINY = [
    "--epochs", "1", "--num-train", "300", "--num-test", "20",
    "--num-encoder-layers", "1", "--num-decoder-layers", "1", "--hidden-dim", "16",
    "--num-heads", "2", "--intermediate-dim", "32", "--batch-size", "32",
    "--warmup-steps", "2", "--num-examples", "3",
]  # fmt: skip


def run_script(*args):
    """Runs train.py's main in this process; returns (exit code, stdout)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = load_script("train").main([str(arg) for arg in args])
    return code, output.getvalue()


@pytest.fixture(scope="module")
def date_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("date_run")
    code, stdout = run_script(
        *TINY,
        "--output-dir", root / "saved",
        "--log-dir", root / "logs",
        "--name", "tiny",
        "--attention-plot", root / "attention.png",
        "--attention-layer", "0",
        "--attention-head", "1",
        "--checkpoint-dir", root / "checkpoints",
        "--checkpoint-every", "4",
    )  # fmt: skip
    assert code == 0
    return root, stdout


@pytest.mark.slow
def test_tensorboard_event_files_are_written_for_training_and_held_out(date_run):
    root, _ = date_run
    for split in ("train", "validation"):
        events = glob.glob(
            str(root / "logs" / "tiny" / "tensorboard" / "*" / split / "events.out.*")
        )
        assert events, f"no {split} event file"


@pytest.mark.slow
def test_checkpoint_flags_reach_the_translators_fit(date_run):
    root, _ = date_run
    steps = sorted(
        int(path.name.split("-")[1]) for path in (root / "checkpoints").glob("ckpt-*")
    )
    # Every 4 steps, and the final state; the two newest are kept.
    assert len(steps) == 2 and steps[0] % 4 == 0 and steps[1] > steps[0], steps


@pytest.mark.slow
def test_loss_and_accuracy_curves_are_a_png(date_run):
    root, stdout = date_run
    curves = root / "logs" / "tiny" / "curves.png"
    assert is_png(curves)
    assert f"Curves: {curves}" in stdout


@pytest.mark.slow
def test_cross_attention_heat_map_is_a_png(date_run):
    root, stdout = date_run
    assert is_png(root / "attention.png")
    assert "Cross-attention heat-map" in stdout


@pytest.mark.slow
def test_export_reloads_and_translates_strings(date_run):
    root, _ = date_run
    translator = export.load_translator(root / "saved" / "tiny" / "serving" / "1")
    translations = translator.translate(tf.constant(["5 March 2021", "1 May 1999"]))
    assert translations.dtype == tf.string
    assert translations.shape == (2,)


@pytest.mark.slow
def test_translations_by_the_reloaded_export_are_printed(date_run):
    _, stdout = date_run
    lines = stdout.split("Translations by the reloaded export")[1].splitlines()[1:4]
    assert all(re.fullmatch(r"  '.+' -> '.*'  \(.+\)", line) for line in lines), lines


@pytest.mark.slow
def test_held_out_exact_match_and_a_missed_target_are_reported(date_run):
    _, stdout = date_run
    assert re.search(r"held-out exact match: \d+\.\d% \(\d+/20\) \(greedy\)", stdout)
    # One epoch of a tiny model cannot reach the target, and says so.
    assert "WARNING: below the 99% target" in stdout
    assert re.search(r"wall time: [\d.]+ s", stdout)


@pytest.mark.slow
def test_the_keras_file_reloads_as_a_translator_that_agrees_with_the_export(date_run):
    import keras

    root, _ = date_run
    translator = keras.saving.load_model(root / "saved" / "tiny" / "tiny.keras")
    served = export.load_translator(root / "saved" / "tiny" / "serving" / "1")
    texts = ["5 March 2021", "1 May 1999"]
    assert translator.translate(texts) == [
        text.decode() for text in served.translate(tf.constant(texts)).numpy()
    ]


@pytest.mark.slow
def test_a_parallel_corpus_trains_with_word_tokenizers_and_reports_bleu(tmp_path):
    words = ["red", "green", "blue", "cat", "dog", "bird"]
    german = ["rot", "grün", "blau", "katze", "hund", "vogel"]
    sources = [f"{a} {b}" for a in words[:3] for b in words[3:]] * 4
    targets = [f"{a} {b}" for a in german[:3] for b in german[3:]] * 4
    for name, lines in (("train.en", sources), ("train.de", targets)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "val.en").write_text("red dog\nblue bird\n", encoding="utf-8")
    (tmp_path / "val.de").write_text("rot hund\nblau vogel\n", encoding="utf-8")

    code, stdout = run_script(
        *TINY,
        "--source", tmp_path / "train.en",
        "--target", tmp_path / "train.de",
        "--valid-source", tmp_path / "val.en",
        "--valid-target", tmp_path / "val.de",
        "--tokenizer", "word",
        "--beam-size", "2",
        "--output-dir", tmp_path / "saved",
        "--log-dir", tmp_path / "logs",
    )  # fmt: skip

    assert code == 0
    assert "corpus: 36 training and 2 held-out pairs; WordTokenizer vocab" in stdout
    assert re.search(
        r"held-out sacreBLEU \(13a\): [\d.]+ cased, [\d.]+ lowercased; chrF [\d.]+ "
        r"\(beam 2\)",
        stdout,
    )
    assert export.load_translator(tmp_path / "saved" / "translator" / "serving" / "1")
    # The record scripts/evaluate.py reads for docs/quality.md.
    record = json.loads((tmp_path / "logs" / "translator" / "run.json").read_text())
    assert record["command"].startswith("python scripts/train.py --epochs 1")
    # Written for any reader: no absolute path of this machine.
    assert record["corpus"] == evaluation.portable_paths(
        f"{tmp_path / 'train.en'} -> {tmp_path / 'train.de'}", SCRIPTS.parent
    )
    assert not record["corpus"].startswith("/")
    assert record["training_seconds"] > 0 and record["parameters"] > 0
    assert [point["epoch"] for point in record["val_bleu"]] == [1]
    assert 0 <= record["val_bleu"][0]["bleu"] <= 100
    assert "word" in record["recipe_summary"]
    # The corpus recipe's precision follows the machine (mixed_bfloat16 on
    # CPUs that multiply bfloat16 natively).
    policy = recipes.CORPUS.dtype_policy() or "float32"
    assert f", {policy}; " in record["recipe_summary"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--source", "{missing}", "--target", "{present}"], "--source: no such file"),
        (["--tsv", "{missing}"], "--tsv: no such file"),
        (
            ["--source", "{present}", "--target", "{present}", "--valid-source",
             "{present}", "--valid-target", "{missing}"],
            "--valid-target: no such file",
        ),
        (["--source", "{present}"], "--source and --target go together"),
        (["--tsv", "{present}", "--source", "{present}"], "either --tsv or"),
        (["--valid-tsv", "{present}"], "validation files need a training corpus"),
        (["--epochs", "0"], "expected a positive integer, got 0"),
        (["--hidden-dim", "big"], "invalid int value: 'big'"),
        (["--tokenizer", "bytes"], "invalid choice: 'bytes'"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_with_a_usage_error(tmp_path, capsys, arguments, message):
    present = tmp_path / "present.txt"
    present.write_text("a\tb\n", encoding="utf-8")
    paths = {"missing": tmp_path / "missing.txt", "present": present}
    with pytest.raises(SystemExit) as error:
        load_script("train").parse_args(
            [argument.format(**paths) for argument in arguments]
        )
    assert error.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_every_transformer_config_field_is_a_flag_of_the_same_name():
    import dataclasses

    from keras_transformer.models import TransformerConfig

    args = load_script("train").parse_args(
        ["--remat", "--num-key-value-heads", "2", "--no-tie-output-projection"]
    )
    fields = {field.name for field in dataclasses.fields(TransformerConfig)}
    derived = {"source_vocabulary_size", "target_vocabulary_size", "padding_id"}
    assert fields - derived <= set(vars(args))
    assert (args.remat, args.num_key_value_heads, args.tie_output_projection) == (
        True,
        2,
        False,
    )


# Files for the corpus flags: {name} in an argument is replaced by its path.
CORPUS_FILES = {
    "two": b"one\ntwo\n",
    "three": b"uno\ndos\ntres\n",
    "latin1": "caf\u00e9\n".encode("latin-1") + b"ok\n",
    "empty": b"",
    "blank": b"\n\n",
    "pairs": b"a\tb\nc\td\n",
    "notab": b"a\tb\nno tab here\n",
}


def usage_error(capsys, tmp_path, arguments):
    """train.py's usage-error line for `arguments`, which may name the
    CORPUS_FILES (written to `tmp_path`) as `{name}`."""
    for name, content in CORPUS_FILES.items():
        (tmp_path / name).write_bytes(content)
    arguments = [argument.format(**{name: tmp_path / name for name in CORPUS_FILES})
                 for argument in arguments]  # fmt: skip
    return script_usage_error(capsys, load_script("train").parse_args, arguments)


@pytest.mark.parametrize(
    "arguments, line",
    [
        (["--dropout", "1.5"], "--dropout: expected a float in the range [0, 1), received 1.5"),
        (["--dropout", "-0.1"], "--dropout: expected a float in the range [0, 1), received -0.1"),
        (["--attention-dropout", "1"], "--attention-dropout: expected a float in the range [0, 1), received 1.0"),
        (["--learning-rate", "-1"], "--learning-rate: expected a positive finite number, received -1.0"),
        (["--learning-rate", "0"], "--learning-rate: expected a positive finite number, received 0.0"),
        (["--learning-rate", "inf"], "--learning-rate: expected a positive finite number, received inf"),
        (["--label-smoothing", "1.0"], "--label-smoothing: expected a float in the range [0, 1), received 1.0"),
        (["--warmup-steps", "-3"], "--warmup-steps: expected a non-negative integer, received -3"),
        (["--hidden-dim", "30", "--num-heads", "4"], "--hidden-dim: expected a multiple of num_heads=4, received 30"),
        (["--hidden-dim", "0"], "--hidden-dim: expected a positive integer, received 0"),
        (["--num-heads", "3"], "--hidden-dim: expected a multiple of num_heads=3, received 64"),
        (["--num-key-value-heads", "3"], "--num-heads: expected a multiple of num_key_value_heads=3, received 4"),
        (["--num-encoder-layers", "0"], "--num-encoder-layers: expected a positive integer, received 0"),
        (["--intermediate-dim", "-8"], "--intermediate-dim: expected a positive integer, received -8"),
        (["--max-source-length", "0"], "--max-source-length: expected a positive integer, received 0"),
        (["--layer-norm-epsilon", "0"], "--layer-norm-epsilon: expected a positive finite number, received 0.0"),
        (["--activation", "sigmoidal"], "--activation: expected 'geglu', 'swiglu' or the name of a Keras"),
        (["--position-encoding", "rotary", "--hidden-dim", "12"], "--hidden-dim: expected hidden_dim / num_heads to be even"),
        (["--position-encoding", "absolute"], "--position-encoding: expected one of 'sinusoidal'"),
        (["--norm-placement", "middle"], "--norm-placement: expected one of 'post'"),
        (["--vocabulary-size", "3"], "--vocabulary-size: expected more than the 4 special tokens, received 3"),
        (["--tokenizer", "sentencepiece"], "--vocabulary-size: Received vocabulary_size=None with tokenizer='sentencepiece'"),
        (["--length-penalty", "-2"], "--length-penalty: expected a non-negative finite number, received -2.0"),
        (["--num-examples", "-1"], "--num-examples: expected 0 or more, received -1"),
        (["--checkpoint-dir", "{two}"], "--checkpoint-dir: {two} is a file; expected a folder (created when missing)"),
        (["--output-dir", "{two}"], "--output-dir: {two} is a file; expected a folder"),
        (["--log-dir", "{two}"], "--log-dir: {two} is a file; expected a folder"),
        (["--source", "{two}", "--target", "{three}"], "--source/--target: Parallel files must have the same number of lines, but '{two}' has 2 and '{three}' has 3."),
        (["--source", "{latin1}", "--target", "{two}"], "--source/--target: '{latin1}' line 1 is not valid UTF-8"),
        (["--source", "{two}", "--target", "{latin1}"], "--source/--target: '{latin1}' line 1 is not valid UTF-8"),
        (["--tsv", "{notab}"], "--tsv: Malformed TSV line 2 in '{notab}': expected at least 2 tab-separated columns, found 1"),
        (["--tsv", "{latin1}"], "--tsv: '{latin1}' line 1 is not valid UTF-8"),
        (["--tsv", "{empty}"], "--tsv: {empty} holds no pairs"),
        (["--tsv", "{blank}"], "--tsv: {blank} holds no pairs"),
        (["--source", "{empty}", "--target", "{empty}"], "--source/--target: {empty} holds no text"),
        (["--source", "{blank}", "--target", "{blank}"], "--source/--target: {blank} holds no text"),
        (["--tsv", "{pairs}", "--valid-tsv", "{notab}"], "--valid-tsv: Malformed TSV line 2"),
        (["--tsv", "{pairs}", "--valid-source", "{two}", "--valid-target", "{three}"], "--valid-source/--valid-target: Parallel files must have the same number of lines"),
    ],
)  # fmt: skip
def test_a_bad_flag_or_file_is_one_usage_line_naming_it(tmp_path, capsys, arguments, line):
    expected = "train.py: error: " + line.format(
        **{name: tmp_path / name for name in CORPUS_FILES}
    )
    assert usage_error(capsys, tmp_path, arguments).startswith(expected)


def test_a_warm_up_longer_than_the_run_is_a_usage_error_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        run_script(
            *TINY[:-4], "--num-train", "40", "--num-test", "4",
            "--warmup-steps", "100000",
            "--output-dir", tmp_path / "saved", "--log-dir", tmp_path / "logs",
        )  # fmt: skip
    assert error.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "train.py: error: --warmup-steps: expected at most total_steps="
    )
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_a_bad_flag_prints_no_traceback_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    from tests.conftest import SCRIPTS, SUBPROCESS_TIMEOUT

    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "train.py"), "--dropout", "1.5"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: --dropout: expected a float in the range [0, 1), received 1.5"
    )


@pytest.mark.slow
def test_base_and_adapter_fine_tune_an_adapter_and_write_it_with_a_run_record(
    adapted, tmp_path
):
    import keras

    code, stdout = run_script(
        "--base", adapted.base_path, "--adapter", "more", "--adapter-rank", "2",
        "--epochs", "1", "--num-train", "64", "--num-test", "8",
        "--output-dir", tmp_path / "saved", "--log-dir", tmp_path / "logs",
    )  # fmt: skip
    assert code == 0
    path = tmp_path / "saved" / "more" / "more.npz"
    with open(tmp_path / "logs" / "more" / "run.json", encoding="utf-8") as file:
        record = json.load(file)
    assert record["adapter"]["rank"] == 2 and record["adapter"]["alpha"] == 4.0
    assert record["adapter"]["file_bytes"] == path.stat().st_size
    assert record["base"] == adapted.base_path
    assert record["training_seconds"] > 0
    fresh = keras.saving.load_model(adapted.base_path)
    assert fresh.load_adapter(path) == "more"
    fresh.set_adapter("more")
    assert record["trainable_parameters"] == sum(
        int(tf.size(v)) for v in fresh.trainable_weights
    )
    assert "adapter: held-out exact match" in stdout
    assert "base: held-out exact match" in stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--adapter", "x"], "--base and --adapter go together"),
        (["--base", "{keras}"], "--base and --adapter go together"),
        (["--base", "{present}", "--adapter", "x"], "--base: expected a .keras file"),
        (["--base", "{keras}", "--adapter", "a b"], "--adapter: expected a name"),
        (["--base", "{keras}", "--adapter", "x", "--hidden-dim", "8"],
         "--hidden-dim: the model comes from --base"),
        (["--base", "{keras}", "--adapter", "x", "--adapter-rank", "0"],
         "expected a positive integer, got 0"),
        (["--base", "{keras}", "--adapter", "x", "--precision", "mixed_float16"],
         "--precision: not available with --adapter"),
        (["--base", "{keras}", "--adapter", "x", "--minutes", "5"],
         "--minutes: not available with --adapter"),
    ],
)  # fmt: skip
def test_bad_adapter_flags_exit_with_a_usage_error(tmp_path, capsys, arguments, message):
    present = tmp_path / "present.txt"
    present.write_text("a\tb\n", encoding="utf-8")
    keras_file = tmp_path / "base.keras"
    keras_file.write_bytes(b"")
    paths = {"present": present, "keras": keras_file}
    with pytest.raises(SystemExit) as error:
        load_script("train").parse_args(
            [argument.format(**paths) for argument in arguments]
        )
    assert error.value.code == 2
    assert re.search(message, capsys.readouterr().err)
