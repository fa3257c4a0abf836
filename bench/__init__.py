"""The load benchmark (bench/run.py) and its report."""
