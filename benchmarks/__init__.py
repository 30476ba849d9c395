"""Speed benchmarks, each a thin script over the library, run from the repository root as
``python -m benchmarks.bench_<name>``; they write their sections of benchmarks/RESULTS.md."""
