"""Experiments that measure the product end to end (pure parts: plans, choices, reports; no torch)."""
