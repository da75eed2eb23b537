"""The measured studies of RELIABILITY.md (issue 14, "Show it"): kill-and-resume,
damaged checkpoints, malicious updates and dropouts, each on the tiny random BERT.

``benchmarks/reliability.py`` is the command line; each study is one module here and writes
``benchmarks/results/reliability_<study>.json``.
"""
