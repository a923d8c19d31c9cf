"""Engine and API benchmarks; results in docs/benchmarks.md."""
