"""Embedded datasets that galcore generates on first use (written under ``data/``, git-ignored)."""
