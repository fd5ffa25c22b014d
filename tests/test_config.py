"""GALConfig: one validated list of options; bad values name the option; all options round-trip."""

from __future__ import annotations

import json

import pytest
import torch

from galcore import GAL, GALConfig, ParamGAL


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"ratio": "0.1"}, TypeError, "ratio"),
        ({"ratio": None}, TypeError, "ratio"),
        ({"ratio": True}, TypeError, "ratio"),
        ({"ratio": -1}, ValueError, "ratio"),
        ({"ratio": float("nan")}, ValueError, "ratio"),
        ({"scale": 0}, ValueError, "scale"),
        ({"scale": "1"}, TypeError, "scale"),
        ({"first_order": "median"}, ValueError, "first_order"),
        ({"accept": "sometimes"}, ValueError, "accept"),
        ({"normalize": "layer"}, ValueError, "normalize"),
        ({"compute_dtype": "int64"}, ValueError, "compute_dtype"),
        ({"compute_dtype": torch.int32}, TypeError, "compute_dtype"),
        ({"compute_dtype": 64}, TypeError, "compute_dtype"),
        ({"hidden": (8, 0)}, ValueError, "hidden"),
        ({"hidden": "8"}, TypeError, "hidden"),
        ({"activation": "swish"}, ValueError, "activation"),
        ({"dim": 1.0}, TypeError, "dim"),
        ({"track_plain": "yes"}, TypeError, "track_plain"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"lr_factor": -0.5}, ValueError, "lr_factor"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        GALConfig(**kwargs)
    with pytest.raises(error, match=name):  # the same checks through GAL's own constructor
        GAL(3, **kwargs)


def test_dtype_names_are_accepted() -> None:
    assert GAL(3, compute_dtype="float64").compute_dtype == torch.float64
    assert GAL(3, compute_dtype="torch.float32").compute_dtype == torch.float32
    assert GAL(3, compute_dtype=None).compute_dtype is None
    assert GALConfig.from_any({"compute_dtype": "float32"}).compute_dtype == torch.float32


def test_from_any_reads_dicts_files_and_refuses_unknown_options(tmp_path) -> None:
    path = tmp_path / "gal.json"
    path.write_text(json.dumps({"gal": {"ratio": 0.01, "hidden": [8, 4], "compute_dtype": "float32"}}))
    cfg = GALConfig.from_any(path, scale=2.0)
    assert (cfg.ratio, cfg.hidden, cfg.compute_dtype, cfg.scale) == (0.01, (8, 4), torch.float32, 2.0)
    with pytest.raises(ValueError, match="unknown GAL option"):
        GALConfig.from_any({"ratoi": 0.1})
    with pytest.raises(TypeError, match="ratio"):
        GALConfig.from_any(None, ratio="abc")
    assert GALConfig.from_any(cfg.to_dict()) == cfg


def test_options_are_settable_with_validation() -> None:
    gal = GAL(4)
    gal.ratio = 0.2
    assert gal.ratio == 0.2 and gal.config.ratio == 0.2
    with pytest.raises(ValueError, match="ratio"):
        gal.ratio = -1.0
    assert gal.ratio == 0.2


def test_options_that_shape_h_are_read_only() -> None:
    gal = GAL(4, hidden=(8,), activation="ReLU", seed=3)
    assert (gal.hidden, gal.activation, gal.seed) == ((8,), "relu", 3)  # names stored lower-case
    for name, value in (("hidden", (16,)), ("activation", "tanh"), ("seed", 4)):
        with pytest.raises(AttributeError, match=f"{name} is fixed at construction"):
            setattr(gal, name, value)
    assert gal.config == GALConfig(hidden=(8,), activation="relu", seed=3) and "hidden" not in gal.__dict__


def test_config_and_options_are_exclusive() -> None:
    cfg = GALConfig(ratio=0.05, hidden=(8,))
    gal = GAL(4, config=cfg)
    assert gal.config is cfg and [m.out_features for m in gal.h] == [8, 4]
    with pytest.raises(TypeError, match="either config.*got scale, seed"):
        GAL(4, scale=2.0, seed=1, config=cfg)


def test_every_option_round_trips_through_state_dict() -> None:
    """load_state_dict restores every option, compute_dtype included (README: options are in the state dict)."""
    cfg = GALConfig(
        ratio=0.05, scale=2.0, hidden=(8, 4), activation="tanh", first_order="mean", accept="always",
        normalize="batch", dim=1, compute_dtype=torch.float32, track_plain=True, sync_distributed=False, seed=7,
        lr_factor=0.5,
    )
    default = GALConfig()
    changed = [name for name in cfg.to_dict() if getattr(cfg, name) != getattr(default, name)]
    assert len(changed) == len(cfg.to_dict())  # the test moves every option away from its default
    src = GAL(6, config=cfg)
    dst = GAL(6, hidden=(8, 4), activation="tanh")  # same h shape, default options
    dst.load_state_dict(src.state_dict())
    assert dst.config == cfg
    assert dst.compute_dtype == torch.float32 and dst.dim == 1


def test_state_dict_is_plain_data() -> None:
    """The options in the state dict are JSON-ready (checkpoints can be inspected without galcore)."""
    extra = GAL(4, compute_dtype="float64").state_dict()["_extra_state"]
    assert json.loads(json.dumps(extra))["config"]["compute_dtype"] == "float64"


def test_seed_draws_h_from_its_own_generator() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = GAL(10, seed=3)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream did not move
    b = GAL(10, seed=3)
    c = GAL(10, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.h[0].weight, c.h[0].weight)


def test_param_gal_shares_the_config() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    pg = ParamGAL([w], 0.1, first_order="mean", compute_dtype="float32")
    assert pg.config.first_order == "mean" and pg.compute_dtype == torch.float32
    with pytest.raises(TypeError, match="ratio"):
        ParamGAL([w], ratio="0.1")
    rec = pg.backward(lambda ps: (ps[0] ** 2).sum(), lr=0.1)
    assert rec.loss.dtype == torch.float32
