"""`jaxstyle.config`: every setting and run option checked once, before any compute.

Each number option refuses NaN and infinities the same way (the command line
parses "nan" and "inf" as floats, and before this check `--style-blend nan`
ran the whole optimisation and then blamed the learning rate).
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from jaxstyle import cli, images
from jaxstyle.config import RunOptions, StylizeConfig
from jaxstyle.errors import UsageError
from synthetic import photo

NUMBER_FIELDS = [f.name for f in dataclasses.fields(StylizeConfig)
                 if isinstance(f.default, float) or str(f.type) == "tuple[float, ...]"]


def test_the_number_fields_are_those_of_the_config():
    assert set(NUMBER_FIELDS) >= {"lr", "content_weight", "style_weight", "tv_weight", "style_scale", "style_blend",
                                  "avg_pool_scale", "ema_decay", "content_layer_weights", "style_layer_weights"}


@pytest.mark.parametrize("name", NUMBER_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_number_setting_refuses_nan_and_inf(name, value):
    tuple_field = isinstance(getattr(StylizeConfig(), name), tuple)
    with pytest.raises(UsageError, match=f"`{name}` must be a finite number, got"):
        StylizeConfig(**{name: (value,) if tuple_field else value})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("config_inputs")
    images.save_image(d / "c.png", photo(32, 32, seed=1))
    images.save_image(d / "s.png", photo(32, 32, seed=2))
    return d


@pytest.mark.parametrize("name", NUMBER_FIELDS)
def test_the_command_line_refuses_nan_and_inf_before_any_compute(name, files, tiny_weights, tmp_path, capsys):
    for value in ("nan", "inf"):
        argv = ["stylize", str(files / "c.png"), "--style", str(files / "s.png"), "-o", str(tmp_path / "o.png"),
                "--weights", str(tiny_weights), cli.flag(name), value]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jaxstyle: error: {cli.flag(name)} must be a finite number, got") and \
            err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_refuses_a_value_given_twice_before_any_compute(files, tiny_weights, tmp_path, capsys):
    argv = ["sweep", str(files / "c.png"), "--style", str(files / "s.png"), "-o", str(tmp_path / "out"),
            "--weights", str(tiny_weights), "--tv-weight", "1,1"]
    assert cli.main(argv) == 2
    assert "--tv-weight lists the value 1.0 twice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, words", [
    (dict(checkpoint_every=-1), "`checkpoint_every` must be zero or positive, got -1"),
    (dict(save_every=-5), "`save_every` must be zero or positive, got -5"),
    (dict(max_pixels=0), "`max_pixels` must be at least 1, got 0"),
    (dict(log="loss.txt"), "`log` must end in .json or .csv, got loss.txt"),
])
def test_run_options_are_checked(changes, words):
    with pytest.raises(UsageError, match=words):
        RunOptions(**changes)
