"""Per-layer error, sensitivity, mixed precision and the report."""
