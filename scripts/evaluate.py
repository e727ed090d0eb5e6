"""Score a trained translator on a test set and write the quality page.

Translates the test sources greedily and with beam search, scores both
against the references with sacreBLEU (13a tokenization; cased and
lowercased BLEU, chrF), records the run in a JSON file of runs, and rewrites
`docs/quality.md` and the PNG of validation BLEU against training time from
every run recorded so far:

    python scripts/evaluate.py --model saved_models/multi30k/multi30k.keras \\
        --source multi30k/test_2016_flickr.en \\
        --target multi30k/test_2016_flickr.de \\
        --run-record logs/multi30k/run.json

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

from keras_transformer import _files, evaluation, validation  # noqa: E402
from keras_transformer.translation import flags, recipes  # noqa: E402

# Published results on the same test set, text only (issue 10); their BLEU
# is tokenized, so it is not directly comparable with sacreBLEU.
ANCHORS = (
    (
        "fairseq `transformer_tiny` (Revisit-MMT baseline)",
        "4+4 layers, d 128, FFN 256, 4 heads, dropout 0.3, joint BPE 10k, "
        "~8k updates of 4096 tokens on a GPU, average of the last 10 "
        "checkpoints, beam 5",
        "41.0 (lowercased, tokenized BLEU)",
    ),
    (
        "DGL `examples/pytorch/transformer`",
        "6 layers, d 512, shared vocabulary and embeddings, label smoothing "
        "0.1, 100 epochs on a GPU",
        "35.8 (cased, Moses-tokenized multi-bleu)",
    ),
)
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS = "docs/quality_runs.json"
DEFAULT_OUTPUT = "docs/quality.md"
DEFAULT_PLOT = "docs/quality_bleu.png"


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
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="(default %(default)s)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="(default %(default)s)")
    parser.add_argument("--plot", default=DEFAULT_PLOT, help="(default %(default)s)")
    return parser


def read_json(parser, flag, path, kind):
    """The JSON value of `path` when it is a `kind`, else an argparse error."""
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        parser.error(f"{flag}: cannot read {path} as JSON: {error}")
    if not isinstance(value, kind):
        names = {dict: "an object", list: "a list"}
        parser.error(
            f"{flag}: {path} holds {names.get(type(value), type(value).__name__)}, "
            f"expected a JSON {names[kind].split()[1]}"
        )
    return value


def check_arguments(parser, args):
    """Refuses bad flags and unreadable files argparse-style, before the
    model is loaded (`--model` is checked as it loads); returns (run record,
    sources, references, earlier runs)."""
    try:
        validation.check_non_negative_float("length_penalty", args.length_penalty)
    except ValueError as error:
        parser.error(f"--length-penalty: {error}")
    record = read_json(parser, "--run-record", args.run_record, dict) if args.run_record else {}
    from keras_transformer.data import read_parallel_files

    try:
        sources, references = read_parallel_files(args.source, args.target)
    except ValueError as error:
        parser.error(f"--source/--target: {error}")
    if not sources:
        parser.error(f"--source/--target: {args.source} holds no test sentence")
    runs = []
    if os.path.exists(args.results):
        runs = read_json(parser, "--results", args.results, list)
        if not all(isinstance(run, dict) and "name" in run for run in runs):
            parser.error(f"--results: {args.results} is not a list of runs written by this script")
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


def write_atomically(path, write):
    """Calls `write(file)` on a binary file that then replaces `path`
    atomically (`keras_transformer._files`); missing folders are made."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _files.atomic_write(path, "wb") as file:
        write(file)


def seconds(value):
    if value is None:
        return ""
    minutes, second = divmod(round(value), 60)
    return f"{minutes} min {second:02d} s"


def figure(value, digits=1):
    return "" if value is None else f"{value:.{digits}f}"


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


def render(runs):
    """The Markdown of the quality page."""
    lines = [
        "# Translation quality",
        "",
        "Written by `scripts/evaluate.py` from `docs/quality_runs.json`; do not "
        "edit by hand. Scores on Multi30k en->de `test_2016_flickr` unless the "
        "run says otherwise: sacreBLEU with its 13a tokenization on detokenized "
        "output (cased, and lowercased), and chrF. Training times are wall "
        "times on the machine named in each run, which other jobs may have "
        "shared (CPU time and load beside them).",
        "",
        "| run | decoding | BLEU lowercased | BLEU cased | chrF |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        for decoding in ("greedy", "beam"):
            scores = run["test"][decoding]
            label = "greedy" if decoding == "greedy" else f"beam {run['beam_size']}"
            lines.append(
                f"| {run['name']} | {label} | {figure(scores['bleu_lowercased'])} | "
                f"{figure(scores['bleu_cased'])} | {figure(scores['chrf'])} |"
            )
    lines += ["", "Anchors (published, not rerun here):", ""]
    lines += ["| system | setup | BLEU |", "|---|---|---|"]
    lines += [f"| {name} | {setup} | {bleu} |" for name, setup, bleu in ANCHORS]
    lines += ["", "![validation BLEU against training time](quality_bleu.png)", ""]
    for run in runs:
        record = run.get("record", {})
        lines += [f"## {run['name']}", ""]
        details = [
            ("corpus", record.get("corpus")),
            ("command", f"`{record['command']}`" if record.get("command") else None),
            ("model", run["model"]),
            ("parameters", f"{run['parameters']:,}" if run.get("parameters") else None),
            ("recipe", record.get("recipe_summary")),
            ("training wall time", seconds(record.get("training_seconds")) or None),
            ("training CPU time", seconds(record.get("cpu_seconds")) or None),
            ("load average during training", record.get("load")),
            ("machine", record.get("machine")),
            ("test set", f"{run['test_source']} ({run['test_size']} sentences)"),
            ("evaluated", run["evaluated"]),
        ]
        lines += [f"- {key}: {value}" for key, value in details if value]
        curve = record.get("val_bleu") or []
        if curve:
            points = ", ".join(
                f"{point['bleu']:.1f} after {seconds(point['training_seconds'])}"
                for point in curve
            )
            lines.append(f"- validation BLEU (cased, greedy) during training: {points}")
        lines.append("")
    return "\n".join(lines)


def plot(runs, path):
    """Validation BLEU against training time, one line per run."""
    from matplotlib.figure import Figure

    figure_ = Figure(figsize=(7, 4), layout="constrained")
    axes = figure_.subplots()
    for run in runs:
        curve = run.get("record", {}).get("val_bleu") or []
        if curve:
            axes.plot(
                [point["training_seconds"] / 60 for point in curve],
                [point["bleu"] for point in curve],
                marker="o",
                label=run["name"],
            )
    axes.set(
        xlabel="training wall time (minutes, evaluations excluded)",
        ylabel="validation BLEU (cased, greedy)",
        title="Validation BLEU during training",
    )
    axes.grid(True, alpha=0.3)
    if axes.lines:
        axes.legend()
    write_atomically(path, lambda file: figure_.savefig(file, format="png", dpi=100))


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
    write_atomically(
        args.results,
        lambda file: file.write(json.dumps(runs, indent=1).encode("utf-8")),
    )
    write_atomically(args.output, lambda file: file.write(render(runs).encode("utf-8")))
    plot(runs, args.plot)
    print(f"Wrote {args.output}, {args.plot} and {args.results}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
