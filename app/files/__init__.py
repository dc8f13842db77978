"""Uploaded JSONL files (demonstrations, regression suites), validated whole before they are stored."""
