"""Benchmarks of hycon_ext against pure PyTorch (pytest-benchmark cases and report.py)."""
