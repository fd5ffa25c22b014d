"""Notebook 02 (classification): plans, arms, full-scale loader runs, the ImageNet recipe, MNIST-1D models."""
