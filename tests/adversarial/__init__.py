"""Attacks by a hostile coordinator on a deployed site (issue 18)."""
