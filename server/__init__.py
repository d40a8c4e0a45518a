"""MedFL ServerApp (runs at the consortium's coordinator)."""
