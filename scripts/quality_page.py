"""Write the quality page from the recorded runs.

`scripts/evaluate.py` scores a model and records the run in
`docs/quality_runs.json`; this step rewrites `docs/quality.md` and the PNG
of validation BLEU against training time from every run recorded there:

    python scripts/quality_page.py

It loads no model: the page can be rewritten (after a change of its
layout, say) without scoring anything again.
"""

import argparse
import json
import os
import sys

from keras_transformer import _files

DEFAULT_RESULTS = "docs/quality_runs.json"
DEFAULT_OUTPUT = "docs/quality.md"
DEFAULT_PLOT = "docs/quality_bleu.png"

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


def read_runs(parser, flag, path):
    """The runs recorded in `path` (none when it does not exist), else an
    argparse error."""
    if not os.path.exists(path):
        return []
    runs = read_json(parser, flag, path, list)
    if not all(isinstance(run, dict) and "name" in run for run in runs):
        parser.error(f"{flag}: {path} is not a list of runs written by scripts/evaluate.py")
    return runs



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


def render(runs):
    """The Markdown of the quality page."""
    lines = [
        "# Translation quality",
        "",
        "Written by `scripts/quality_page.py` from `docs/quality_runs.json` "
        "(runs scored by `scripts/evaluate.py`); do not "
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

    figure_ = Figure(figsize=(7, 5.5), layout="constrained")
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
        # Below the axes: inside, the legend of many runs hides their curves.
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize="small")
    write_atomically(path, lambda file: figure_.savefig(file, format="png", dpi=100))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="quality_page.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--results", default=DEFAULT_RESULTS,
        help="runs recorded by scripts/evaluate.py (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="(default %(default)s)")
    parser.add_argument("--plot", default=DEFAULT_PLOT, help="(default %(default)s)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.exists(args.results):
        parser.error(
            f"--results: no such file: {args.results}; record a run with "
            "scripts/evaluate.py first"
        )
    runs = read_runs(parser, "--results", args.results)
    write_atomically(args.output, lambda file: file.write(render(runs).encode("utf-8")))
    plot(runs, args.plot)
    print(f"Wrote {args.output} and {args.plot} from {len(runs)} runs in {args.results}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
