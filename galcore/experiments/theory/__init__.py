"""Notebook 01 (theory): the Taylor-remainder surface and the toy problems."""
