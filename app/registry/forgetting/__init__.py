"""The forgetting matrix: versions of a lineage x suites, scores with intervals, as JSON or a PNG."""
