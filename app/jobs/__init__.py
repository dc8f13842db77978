"""Training jobs: one or more SDFT skill stages on one base version, with events and a status table."""
