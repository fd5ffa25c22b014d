"""Notebook 05 (ablations): the studies and the mechanism traces."""
