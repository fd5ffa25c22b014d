"""Notebook 04 (regression)."""
