"""Evaluation on a model: suites through a rollout backend (runner), a result cache keyed by
(checkpoint, suite, decoding) (cache), and the pre-training teacher-readiness probe (probe).
The results they return are plain data defined torch-free in app.evaluation."""
