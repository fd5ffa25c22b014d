"""Notebook 05's studies: what each of GAL's settings does to training, and where it acts.

One small, fast setup (:func:`setup`: scikit-learn's digits, an MLP 64-64-10, SGD with
momentum 0.9, lr 0.05 and weight decay 1e-5 as in the release's CIFAR runs) carries every
study, so many seeds fit a CPU budget. A :class:`Study` is a set of arms
(:class:`~galcore.experiments.harness.TrainConfig`) with one control; its arms run on the same
seeds (paired: same initial weights, batches and h), output-space GAL arms through
:func:`galcore.experiments.ablations.mechanism.trace` (the harness's run plus the measurements of the
mechanism), parameter-space arms through :func:`galcore.experiments.harness.run_arms`.

Studies (:func:`studies`):

- ``dose``: ratio r x how h learns (frozen, in the model's optimizer, its own Adam), r = 0
  (the standard method) as control.
- ``batch``: the same grid with ``normalize="batch"``; compared with the standard method and
  with the same arm under the per-sample normalisation.
- ``accept``: the acceptance rule at large learning rates (plain SGD up to lr 1) and at ratios
  where tentative steps can be rejected.
- ``factors``: scale, first-order term, acceptance rule, h's architecture and how h learns, one
  at a time around an active base (r = 0.1, h trained by its own Adam).
- ``space``: output vs parameter space on a model small enough for :class:`galcore.ParamGAL`.

:func:`verdicts` compares arms with :func:`galcore.experiments.harness.compare` on test NLL and
test error (margins in :data:`MARGIN_ERROR` and :func:`loss_margin`). The package splits the
work: :mod:`~galcore.experiments.ablations.plan` (setup, arms, labels, margins),
:mod:`~galcore.experiments.ablations.runs` (runs, verdicts, the tentative ray),
:mod:`~galcore.experiments.ablations.views` (tables, ``summary.csv``),
:mod:`~galcore.experiments.ablations.figures`, :mod:`~galcore.experiments.ablations.text`, and
:mod:`~galcore.experiments.ablations.dose` (the dose-response against the placebo). This module
gathers the notebook's names. The notebook's views: tables (``*_view``, :func:`arm_table`), figures (``show_*``, through
:func:`galcore.experiments.harness.plots.show`), the text of the findings (``*_text``,
:func:`conclusion`: every number and verdict computed, each reading stated only when the
numbers support it) and the files (:func:`save_summary`, :func:`save_conclusion`).
"""

from __future__ import annotations

from galcore.experiments.ablations.figures import show_dose, show_mechanism, show_verdicts
from galcore.experiments.ablations.plan import (
    H_MODES,
    MARGIN_ERROR,
    OUT,
    RATIOS,
    SHORT,
    Study,
    arm_table,
    gal_arm,
    label,
    loss_margin,
    setup,
    space_setup,
    split_label,
    studies,
)
from galcore.experiments.ablations.runs import ray_table, run_study, verdicts
from galcore.experiments.ablations.text import (
    accept_text,
    base_text,
    batch_text,
    conclusion,
    dose_text,
    factors_text,
    mechanism_text,
    save_conclusion,
    space_text,
)
from galcore.experiments.ablations.views import (
    mechanism_view,
    results_view,
    save_summary,
    setup_table,
    summary_frame,
    verdict_view,
)

__all__ = [
    "H_MODES", "MARGIN_ERROR", "OUT", "RATIOS", "SHORT", "Study", "accept_text", "arm_table",
    "base_text", "batch_text", "conclusion", "dose_text", "factors_text", "gal_arm", "label", "loss_margin",
    "mechanism_text", "mechanism_view", "ray_table", "results_view", "run_study", "save_conclusion", "save_summary",
    "setup", "setup_table", "show_dose", "show_mechanism", "show_verdicts", "space_setup", "space_text",
    "split_label", "studies", "summary_frame", "verdict_view", "verdicts",
]
