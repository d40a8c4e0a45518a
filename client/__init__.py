"""MedFL ClientApp (runs at each hospital)."""
