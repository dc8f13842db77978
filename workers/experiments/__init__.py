"""Experiment runners: train and evaluate through the same stage, evaluation and gate code as the service."""
