"""Benchmarks (`make bench`): memory-model accuracy, operator scale, trainer throughput."""
