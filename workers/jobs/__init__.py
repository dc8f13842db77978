"""Jobs on workers: the pipeline a Celery task runs for one job, crash-safe and idempotent."""
