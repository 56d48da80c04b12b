"""Experiments over many runs: hyperparameter sweeps and their summaries, reruns that check a run
reproduces, and side-by-side comparisons."""
