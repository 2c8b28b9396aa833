"""Prefect flows: composition only (no arithmetic, no DataFrames) and deployment definitions."""
