"""The run directory: config, per-round log, summary (reports grow here)."""
