"""Training augmentation: right transforms, right ranges, switchable off, repeatable."""

from __future__ import annotations

import pytest
import torch

from pneumolens.augment import Augment, AugmentConfig
from pneumolens.errors import ConfigError


def test_disabled_is_the_identity() -> None:
    x = torch.rand(4, 1, 16, 16)
    assert Augment(AugmentConfig(enabled=False))(x) is x


def test_flip_only_mirrors_exactly() -> None:
    x = torch.rand(3, 1, 8, 8)
    out = Augment(AugmentConfig(hflip=1.0, degrees=0, zoom=0, translate=0))(x)
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)


def test_all_zero_ranges_are_the_identity_up_to_resampling() -> None:
    x = torch.rand(2, 1, 16, 16)
    out = Augment(AugmentConfig(hflip=0, degrees=0, zoom=0, translate=0))(x)
    torch.testing.assert_close(out, x)


def test_reflection_fill_never_introduces_black_borders() -> None:
    x = torch.full((8, 1, 32, 32), 0.7)
    out = Augment(AugmentConfig())(x)  # the original's ±72°, zoom, shift
    assert out.min() > 0.69


def test_rotation_changes_the_image_and_stays_in_range() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 1, 32, 32)
    out = Augment(AugmentConfig(hflip=0, degrees=72, zoom=0.1, translate=0.1, brightness=0.1, contrast=0.2))(x)
    assert out.shape == x.shape and (out - x).abs().mean() > 0.05
    assert out.min() >= 0 and out.max() <= 1


def test_same_generator_seed_gives_the_same_batch() -> None:
    x = torch.rand(4, 1, 32, 32)
    aug = Augment(AugmentConfig(brightness=0.1))
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="padding_mode"):
        AugmentConfig(padding_mode="wrap")
    with pytest.raises(ConfigError, match="unknown"):
        AugmentConfig.from_dict({"shear": 0.1})
