"""Experiments of fcn-keras: ``python -m experiments.skip_experiment`` (the paper's §4.2)."""
