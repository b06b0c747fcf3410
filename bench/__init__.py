"""Benchmarks (`make bench`, `make bench-search`); a package so `bench.harness` imports from either script."""
