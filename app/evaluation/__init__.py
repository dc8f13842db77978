"""Regression suites, graders, statistics, the promotion gate and the forgetting matrix (no torch)."""
