"""GAL's options are declared once, in GALConfig: the constructors accept, document and expose
every field, and a misspelt option fails with GALConfig's message."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from galcore import GAL, GALConfig, ParamGAL

FIELDS = [f.name for f in dataclasses.fields(GALConfig)]
READ_ONLY = {"hidden", "activation", "seed", "dim"}


@pytest.mark.parametrize("cls", [GAL, ParamGAL])
def test_constructors_accept_document_and_expose_every_option(cls: type) -> None:
    params = inspect.signature(cls).parameters
    assert list(params)[1] == "ratio"  # ratio stays the first positional option
    assert set(FIELDS) <= set(params), sorted(set(FIELDS) - set(params))
    doc = inspect.getdoc(cls) or ""
    missing = [name for name in FIELDS if f"{name}:" not in doc]
    assert missing == []
    target = torch.nn.Parameter(torch.ones(3))
    first = 3 if cls is GAL else [target]
    changed = {"ratio": 0.2, "scale": 2.0, "hidden": (4,), "activation": "tanh", "first_order": "mean",
               "accept": "always", "normalize": "batch", "dim": 0, "compute_dtype": torch.float32,
               "track_plain": True, "sync_distributed": False, "seed": 5, "lr_factor": 0.5}
    assert set(changed) == set(FIELDS)  # a new field must be added here too
    gal = cls(first, **changed)
    assert gal.config == GALConfig(**changed)
    for name, value in changed.items():
        assert getattr(gal, name) == value
        assert f"{name}=" in repr(gal)
    gal.ratio, gal.lr_factor = 0.3, 2.0
    assert gal.config.ratio == 0.3 and gal.config.lr_factor == 2.0
    for name in READ_ONLY:
        with pytest.raises(AttributeError, match="fixed at construction"):
            setattr(gal, name, changed[name])


@pytest.mark.parametrize("cls", [GAL, ParamGAL])
def test_a_misspelt_option_gets_galconfigs_message(cls: type) -> None:
    first = 3 if cls is GAL else [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match=r"unknown GAL option\(s\) \['ration'\]; valid: \[.*'ratio'"):
        cls(first, ration=1e-3)
    assert cls(first, 0.25).ratio == 0.25  # positional ratio
    assert cls(first).ratio == GALConfig().ratio
