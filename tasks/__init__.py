"""One thin Prefect task per pipeline stage; each reads, calls one sentio_core function, writes atomically."""
