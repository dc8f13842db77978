"""Regression suites: an uploaded regression_suite file bound to a name, a grader and gate settings."""
