"""Notebook 03 (detection): the Ultralytics study and its generated shapes data set."""
