"""Benchmarks of albert-spp: `python -m bench [name]`.

Every figure is a ratio against a baseline measured in the same run on the same machine;
results are printed as a table and appended as JSON lines to `bench/results/<name>.jsonl`.
"""
