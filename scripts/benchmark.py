"""Speed of keras_transformer next to keras-hub and Keras core layers.

One process measures every section side by side: the candidates of a
section are warmed up (compiled) first, then timed in turns, one repeat of
each after the other, so a change of machine load hits all of them alike.
Figures are medians over the repeats.

Sections (`--sections`, default all):

- training: `model.fit` throughput of the same encoder-decoder built with
  this library, with keras-hub's `TransformerEncoder`/`TransformerDecoder`
  and with `keras.layers.MultiHeadAttention`, with and without XLA; achieved
  FLOP/s as a fraction of a plain fp32 matmul's.
- decoding: greedy decoding with the library's cached `greedy_decode`, with
  a loop that recomputes the whole prefix every step, and with keras-hub's
  cached `TransformerDecoder` driven by its `GreedySampler`.
- lora: trainable fraction and step time of LoRA on q and v against full
  fine-tuning; inference latency after `merge_lora` against the base model.
- remat: peak memory (fresh process per configuration) and step time with
  and without `TransformerConfig.remat`.
- serving: the exported `translate` endpoint against in-process decoding.
- scaling: training step time as the sequence length and the depth grow.
- fit_path: the corpus recipe's `Translator.fit` against its own
  fixed-shape compiled step, the old fit path and keras-hub's layers in
  the same pipeline (tokens per second).

    python scripts/benchmark.py                      # all sections, ~30 min on 2 cores
    python scripts/benchmark.py --sections training decoding --repeats 7
    python scripts/benchmark.py --smoke              # tiny settings, checks the script

Writes `<output-dir>/benchmarks.md` (machine, versions, the command, the
tables) and `<output-dir>/benchmark_<section>.png`. The output directory is
`docs/` for full runs and a new temporary folder for `--smoke`.

keras-hub is optional (`pip install -e ".[bench]"`): without it its rows say
"skipped" and why.
"""

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The sections live in scripts/benchmarks/, importable however this file is
# run or loaded.
SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import keras  # noqa: E402

from benchmarks import decoding, lora, remat, report, scaling  # noqa: E402
from benchmarks import fit_path, serving, training  # noqa: E402
from benchmarks.common import REPOSITORY, SMOKE, Settings  # noqa: E402

SECTIONS = {
    "training": training.run,
    "decoding": decoding.run,
    "lora": lora.run,
    "remat": remat.run,
    "serving": serving.run,
    "scaling": scaling.run,
    "fit_path": fit_path.run,
}
SECTION_NAMES = tuple(SECTIONS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTION_NAMES,
        default=list(SECTION_NAMES),
        help="sections to run, in order",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed repeats per candidate (median reported)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed repeats per candidate first"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the script in seconds, numbers mean nothing",
    )
    parser.add_argument(
        "--output-dir",
        help="where benchmarks.md and the PNGs go (default: docs/, "
        "or a new temporary folder with --smoke)",
    )
    parser.add_argument("--remat-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    options = parse_args(argv)
    if options.remat_worker:
        remat.remat_worker(json.loads(options.remat_worker))
        return 0
    if options.output_dir is None:
        options.output_dir = (
            tempfile.mkdtemp(prefix="benchmark-smoke-")
            if options.smoke
            else os.path.join(REPOSITORY, "docs")
        )
    os.makedirs(options.output_dir, exist_ok=True)
    settings = SMOKE if options.smoke else Settings()
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    context = {
        "command": "python "
        + " ".join(
            shlex.quote(arg)
            for arg in [os.path.relpath(__file__, REPOSITORY)]
            + list(sys.argv[1:] if argv is None else argv)
        ),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": report.machine_description(),
        "uptime_start": report.uptime(),
        "versions": report.versions(),
        "repeats": options.repeats,
        "warmup": options.warmup,
    }
    results = []
    for name in options.sections:
        section_started = time.perf_counter()
        result = SECTIONS[name](settings, options)
        result.elapsed_s = time.perf_counter() - section_started
        report.print_result(result)
        results.append(result)
        keras.backend.clear_session()
    context["uptime_end"] = report.uptime()
    context["elapsed_min"] = (time.perf_counter() - started) / 60
    path = os.path.join(options.output_dir, "benchmarks.md")
    report.write(path, results, context)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
