"""The sections of `scripts/benchmark.py`, one module each (`run(settings,
options)` returns a `common.SectionResult`)."""
