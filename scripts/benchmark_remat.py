"""Peak memory and step time of training with and without `remat`.

Each configuration trains in its own fresh process, so one run's allocations
cannot hide in another's peak. A worker builds the model and its optimizer,
records its resident set size as the baseline, then runs warm-up and timed
`train_on_batch` steps; the peak (`ru_maxrss`) minus the baseline is the
memory training added: activations, gradients and the compiled step.

    python scripts/benchmark_remat.py                  # 8+8 layers, CPU
    python scripts/benchmark_remat.py --jit-compile    # the same under XLA

Prints one row per configuration (median wall and CPU seconds per step)
and the ratios remat / no remat.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--layers", type=int, default=8, help="encoder layers and decoder layers, each"
    )
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn-dim", type=int, default=1024)
    parser.add_argument("--vocabulary", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--length", type=int, default=256, help="source and target length"
    )
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--worker", choices=["remat", "plain"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def max_rss_kib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_kib():
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def worker(args):
    """Trains one configuration and prints its measurements as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from keras_transformer import losses, models

    config = models.TransformerConfig(
        source_vocabulary_size=args.vocabulary,
        target_vocabulary_size=args.vocabulary,
        num_encoder_layers=args.layers,
        num_decoder_layers=args.layers,
        hidden_dim=args.hidden_dim,
        num_heads=args.heads,
        intermediate_dim=args.ffn_dim,
        dropout=args.dropout,
        max_source_length=args.length,
        max_target_length=args.length,
        remat=args.worker == "remat",
    )
    model = models.build_transformer(config)
    model.compile(
        optimizer="adam",
        loss=losses.MaskedSparseCategoricalCrossentropy(),
        jit_compile=args.jit_compile,
    )
    # Optimizer slots exist before the baseline, so the difference is what
    # a training step needs.
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)

    def ids():
        return rng.integers(1, args.vocabulary, (args.batch, args.length), "int32")

    inputs = {"source_ids": ids(), "target_ids": ids()}
    labels = ids()
    baseline = current_rss_kib()

    wall_times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        wall_start, cpu_start = time.perf_counter(), cpu_seconds()
        loss = model.train_on_batch(inputs, labels)  # returns numpy: synchronous
        if step >= args.warmup:
            wall_times.append(time.perf_counter() - wall_start)
            cpu_times.append(cpu_seconds() - cpu_start)
    print(
        json.dumps(
            {
                "baseline_kib": baseline,
                "peak_kib": max_rss_kib(),
                "median_step_s": statistics.median(wall_times),
                "median_step_cpu_s": statistics.median(cpu_times),
                "loss": float(loss),
                "parameters": model.count_params(),
            }
        )
    )


def run_worker(mode, argv):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv, "--worker", mode],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{mode} worker failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    results = {mode: run_worker(mode, argv) for mode in ("plain", "remat")}
    print(
        f"{args.layers}+{args.layers} layers, d_model {args.hidden_dim}, "
        f"{args.heads} heads, ffn {args.ffn_dim}, batch {args.batch} x length "
        f"{args.length}, dropout {args.dropout}, "
        f"{'XLA' if args.jit_compile else 'graph'}; "
        f"{results['plain']['parameters']:,} parameters"
    )
    print(
        f"{'':8}{'baseline MiB':>14}{'peak MiB':>10}{'training MiB':>14}"
        f"{'step s':>9}{'step CPU s':>12}{'loss':>8}"
    )
    for mode, result in results.items():
        result["training_kib"] = result["peak_kib"] - result["baseline_kib"]
        print(
            f"{mode:8}{result['baseline_kib'] / 1024:14.0f}"
            f"{result['peak_kib'] / 1024:10.0f}"
            f"{result['training_kib'] / 1024:14.0f}"
            f"{result['median_step_s']:9.2f}"
            f"{result['median_step_cpu_s']:12.2f}{result['loss']:8.3f}"
        )
    ratios = {
        key: results["remat"][key] / results["plain"][key]
        for key in ("training_kib", "median_step_s", "median_step_cpu_s")
    }
    print(
        f"remat / plain: memory {ratios['training_kib']:.2f}x, step time "
        f"{ratios['median_step_s']:.2f}x, step CPU time "
        f"{ratios['median_step_cpu_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
