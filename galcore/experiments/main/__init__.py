"""The main job: the notebook runner (``python -m galcore.experiments.main.runner``) and the report."""
