"""The benchmark harness: local stand-in servers, load runs and micro-benchmarks."""
