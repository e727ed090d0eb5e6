"""Score a trained translator on a test set and record the run.

Translates the test sources greedily and with beam search, scores both
against the references with sacreBLEU (13a tokenization; cased and
lowercased BLEU, chrF) and records the run in a JSON file of runs
(`docs/quality_runs.json`, replacing a run of the same name);
`scripts/quality_page.py` then rewrites `docs/quality.md` and its plot from
every run recorded there:

    python scripts/evaluate.py --model saved_models/multi30k/multi30k.keras \\
        --source multi30k/test_2016_flickr.en \\
        --target multi30k/test_2016_flickr.de \\
        --run-record logs/multi30k/run.json
    python scripts/quality_page.py

`--model` is a `.keras` file of a `Translator` (beam size and length penalty
from the flags) or a SavedModel export of one (its `translate` and
`translate_beam` endpoints, with the beam settings it was exported with).
The run record, written by the training command, holds the corpus, the
command line, the training time and the validation BLEU curve; without one
those columns stay empty.
"""

import argparse
import datetime
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_transformer import evaluation, validation  # noqa: E402
from keras_transformer.translation import flags, recipes  # noqa: E402

# The runs file is quality_page.py's format: it reads it, this script adds
# to it.
SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(SCRIPTS)
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import quality_page  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help=".keras file or SavedModel")
    parser.add_argument("--source", required=True, help="test sources, one a line")
    parser.add_argument("--target", required=True, help="test references")
    parser.add_argument(
        "--run-record",
        help="JSON written by the training run: name, corpus, command, "
        "training_seconds, cpu_seconds, parameters, val_bleu (list of "
        "{epoch, bleu, training_seconds})",
    )
    parser.add_argument("--name", help="run name (default: the record's, or the model's)")
    parser.add_argument(
        "--beam-size",
        type=flags.positive_int,
        default=recipes.CORPUS.beam_size,
        help="beams for a .keras model (default %(default)s)",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=recipes.CORPUS.length_penalty,
        help="GNMT length-penalty exponent for a .keras model (default %(default)s)",
    )
    parser.add_argument(
        "--results", default=quality_page.DEFAULT_RESULTS,
        help="the runs file the run is recorded in (default %(default)s)",
    )  # fmt: skip
    return parser


def check_arguments(parser, args):
    """Refuses bad flags and unreadable files argparse-style, before the
    model is loaded (`--model` is checked as it loads); returns (run record,
    sources, references, earlier runs)."""
    try:
        validation.check_non_negative_float("length_penalty", args.length_penalty)
    except ValueError as error:
        parser.error(f"--length-penalty: {error}")
    record = (
        quality_page.read_json(parser, "--run-record", args.run_record, dict)
        if args.run_record
        else {}
    )
    from keras_transformer.data import read_parallel_files

    try:
        sources, references = read_parallel_files(args.source, args.target)
    except ValueError as error:
        parser.error(f"--source/--target: {error}")
    if not sources:
        parser.error(f"--source/--target: {args.source} holds no test sentence")
    runs = quality_page.read_runs(parser, "--results", args.results)
    return record, sources, references, runs


def load_translate(path, beam_size, length_penalty):
    """Returns (`translate(texts, beam) -> list of str`, parameters, beam)."""
    if os.path.isdir(path):
        import tensorflow as tf

        from keras_transformer.translation import export

        loaded = export.load_translator(path)

        def translate(texts, beam):
            endpoint = loaded.translate_beam if beam else loaded.translate
            return [t.decode("utf-8") for t in endpoint(tf.constant(texts)).numpy()]

        with open(os.path.join(path, export.METADATA_PATH), encoding="utf-8") as file:
            metadata = json.load(file)
        return translate, None, metadata["beam_size"]

    from keras_transformer import models

    # The library's loader: a damaged file is named, not "File not found".
    translator = models.load_model(path)
    if not hasattr(translator, "translate"):
        raise ValueError(
            f"{path!r} holds a {type(translator).__name__}, not a Translator: "
            "there are no tokenizers to translate text with."
        )

    def translate(texts, beam):
        if not beam:
            return translator.translate(texts)
        return translator.translate(
            texts, method="beam", beam_size=beam_size, length_penalty=length_penalty
        )

    return translate, translator.count_params(), beam_size


def portable(value):
    """A run (or any of its parts) with this machine's paths made relative
    to the repository (`evaluation.portable_paths`)."""
    if isinstance(value, str):
        return evaluation.portable_paths(value, REPOSITORY)
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item) for item in value]
    return value


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    record, sources, references, runs = check_arguments(parser, args)
    name = args.name or record.get("name") or os.path.basename(
        os.path.normpath(args.model)
    ).removesuffix(".keras")
    try:
        translate, parameters, beam_size = load_translate(
            args.model, args.beam_size, args.length_penalty
        )
    except ValueError as error:
        parser.error(f"--model: {error}")
    test = {}
    for decoding, beam in (("greedy", None), ("beam", beam_size)):
        hypotheses = translate(sources, beam)
        test[decoding] = evaluation.sacrebleu_scores(hypotheses, references)
        print(
            f"{name} {decoding}: BLEU {test[decoding]['bleu_lowercased']:.2f} "
            f"lowercased, {test[decoding]['bleu_cased']:.2f} cased; chrF "
            f"{test[decoding]['chrf']:.2f}"
        )
    run = {
        "name": name,
        "model": args.model,
        "parameters": parameters or record.get("parameters"),
        "beam_size": beam_size,
        "test_source": args.source,
        "test_size": len(sources),
        "test": test,
        "record": record,
        "evaluated": datetime.date.today().isoformat(),
    }
    runs = portable([old for old in runs if old["name"] != name] + [run])
    quality_page.write_atomically(
        args.results,
        lambda file: file.write(json.dumps(runs, indent=1).encode("utf-8")),
    )
    print(
        f"Recorded {name} in {args.results}; `python scripts/quality_page.py "
        f"--results {args.results}` rewrites the quality page."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
