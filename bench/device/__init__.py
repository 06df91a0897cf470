"""What the benchmarks need on a lent GPU machine: a small model folder for real vLLM, the script that runs it."""
