"""Every setting of every explanation method has a type and a range, checked before any work (issue 17, item 2).

The cases are those of the hostile pass: each one crashed (AssertionError, ZeroDivisionError, a
352 GB allocation) or ran for hours before this check existed.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from pneumolens.errors import ConfigError, SettingError
from pneumolens.explain import METHODS, explain, method_params, parse_method_spec
from pneumolens.explain.settings import SETTINGS, conv_layers, validate_settings
from test_explain_support import one_thread, textured_images, tiny_cnnlstm  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

#: (method, settings, words the one-line reason must contain): the hostile pass's cases and their kin.
HOSTILE = [
    ("gradcam", {"layer": "lstm1"}, "'lstm1' is not a convolutional layer"),
    ("gradcam", {"layer": "lstm2"}, "'lstm2' is not a convolutional layer"),
    ("gradcam", {"layer": "head.dense1"}, "feature map"),
    ("gradcam", {"relu": 3}, "relu must be true or false"),
    ("kernelshap", {"n_segments": 0}, "n_segments must be an integer from 2 to"),
    ("lime", {"n_segments": -3}, "n_segments must be an integer from 2 to"),
    ("lime", {"n_samples": 1_000_000_000}, "n_samples must be an integer from 2 to"),
    ("lime", {"n_samples": 10.5}, "n_samples must be an integer"),
    ("lime", {"n_samples": True}, "n_samples must be an integer"),
    ("lime", {"compactness": 0}, "compactness must be a number greater than 0"),
    ("lime", {"baseline": "white"}, "unknown baseline 'white'"),
    ("ig", {"sigma": -1}, "sigma must be a number greater than 0"),
    ("ig", {"sigma": float("nan")}, "sigma must be a number greater than 0"),
    ("ig", {"n_steps": 100_000_000}, "n_steps must be an integer from 1 to"),
    ("ig", {"internal_batch_size": 0}, "internal_batch_size must be an integer from 1 to"),
    ("shap", {"stdevs": -1}, "stdevs must be a number from 0 to 1"),
    ("shap", {"n_samples": 100_000_000}, "n_samples must be an integer from 1 to"),
    ("occlusion", {"perturbations_per_eval": 100_000_000}, "perturbations_per_eval must be an integer from 1 to"),
    ("occlusion", {"window": 33}, "window must be an integer from 1 to 32"),
    ("occlusion", {"stride": "big"}, "stride must be an integer"),
]


def test_every_setting_of_every_method_has_a_spec():
    assert set(SETTINGS) == set(METHODS)
    for method in METHODS:
        assert set(SETTINGS[method]) == set(method_params(method)), method


@pytest.mark.parametrize("method, params, words", HOSTILE)
def test_hostile_settings_are_refused_before_any_work(method, params, words, monkeypatch):
    from pneumolens.explain import core

    @functools.wraps(core.METHODS[method])  # keeps the signature the parameter check reads
    def must_not_run(*args, **kwargs):
        raise AssertionError("the method ran")

    monkeypatch.setitem(core.METHODS, method, must_not_run)
    with pytest.raises(SettingError) as info:
        explain(tiny_cnnlstm(), textured_images(1, 32), method, **params)
    message = str(info.value)
    assert words in message and message.startswith(f"{method}: ") and "\n" not in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_a_non_convolutional_layer_names_the_allowed_ones():
    model = tiny_cnnlstm()
    assert conv_layers(model)[:3] == ["features", "features.block1", "features.block1.conv"]
    assert not any(name.startswith(("lstm", "head", "bn", "drop")) for name in conv_layers(model))
    with pytest.raises(SettingError, match=r"choose one of features, features.block1, .*features.block3.relu"):
        validate_settings("gradcam", {"layer": "lstm1"}, model=model)


def test_service_bounds_are_tighter_than_the_librarys():
    assert validate_settings("lime", {"n_samples": 20_000}) == {"n_samples": 20_000}
    with pytest.raises(SettingError, match="from 2 to 5000"):
        validate_settings("lime", {"n_samples": 20_000}, service=True)
    for method, spec in SETTINGS.items():
        for name, setting in spec.items():
            if setting.service_hi is not None:
                assert setting.hi is not None and setting.service_hi <= setting.hi, (method, name)


def test_valid_values_are_normalised():
    assert validate_settings("ig", {"sigma": 2, "n_steps": 8}) == {"sigma": 2.0, "n_steps": 8}
    assert isinstance(validate_settings("ig", {"sigma": 2})["sigma"], float)
    assert validate_settings("shap", {"stdevs": 0}) == {"stdevs": 0.0}
    assert validate_settings("occlusion", {"window": 32}, size=32) == {"window": 32}


@pytest.mark.parametrize(
    "text, words",
    [
        ("kernelshap:n_segments=0", "n_segments must be an integer from 2 to"),
        ("lime:n_samples=1000000000", "n_samples must be an integer from 2 to"),
        ("ig:sigma=-1", "sigma must be a number greater than 0"),
        ("ig:sigma=nan", "sigma must be a number greater than 0"),
        ("gradcam:relu=maybe", "relu must be true or false"),
    ],
)
def test_method_specs_are_checked_when_parsed(text, words):
    with pytest.raises(SettingError, match=words):
        parse_method_spec(text)


def test_defaults_pass_their_own_spec():
    model = tiny_cnnlstm()
    for method in METHODS:
        for name, setting in SETTINGS[method].items():
            if setting.default is not None:
                validate_settings(method, {name: setting.default}, model=model, size=32, service=True)


def test_gradcam_still_runs_on_every_allowed_layer():
    model = tiny_cnnlstm()
    images = textured_images(1, 32)
    for name in conv_layers(model):
        maps = explain(model, images, "gradcam", layer=name).maps
        assert maps.shape == (1, 32, 32) and np.isfinite(maps).all(), name
