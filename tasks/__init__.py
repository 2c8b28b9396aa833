"""One thin Prefect task per pipeline stage: each reads its inputs, calls the sentio_core functions
of its stage, writes atomically and returns its typed output record (with its cache key)."""
