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


# --- the shortcut breakers -----------------------------------------------------------------------
from pneumolens.augment import compose, erase_border, glyph_bank, paste_markers, random_crop  # noqa: E402
from pneumolens.config import load_config  # noqa: E402

NO_GEOMETRY = {"hflip": 0.0, "degrees": 0.0, "zoom": 0.0, "translate": 0.0}


@pytest.mark.parametrize("knob", ["crop", "erase", "marker", "gamma", "noise"])
def test_each_breaker_at_zero_is_the_identity(knob: str) -> None:
    x = torch.rand(4, 1, 16, 16)
    aug = Augment(AugmentConfig(**NO_GEOMETRY, **{knob: 0.0}))
    assert not aug.active and aug(x) is x


@pytest.mark.parametrize("knob", ["crop", "erase", "marker"])
def test_probability_zero_breakers_draw_nothing_and_change_nothing(knob: str) -> None:
    """With only a size set and its probability 0, the batch and the random stream are untouched."""
    x = torch.rand(4, 1, 16, 16)
    g = torch.Generator().manual_seed(1)
    out = {"crop": random_crop, "erase": erase_border, "marker": paste_markers}
    cfg = AugmentConfig(**NO_GEOMETRY)
    if knob == "crop":
        theta = random_crop(4, cfg, g)
        torch.testing.assert_close(theta, torch.eye(2, 3).expand(4, 2, 3))
    else:
        assert torch.equal(out[knob](x, cfg, g), x)


def test_existing_presets_draw_exactly_what_they_drew_before() -> None:
    """seed and base: the affine draws (B x 5) and, for base, brightness/contrast (B x 2), nothing else."""
    x = torch.rand(4, 1, 16, 16)
    for preset, draws in (("seed", [(4, 5)]), ("base", [(4, 5), (4, 2, 1, 1, 1)])):
        g = torch.Generator().manual_seed(7)
        Augment(load_config(preset).augment)(x, generator=g)
        expected = torch.Generator().manual_seed(7)
        for shape in draws:
            torch.rand(*shape, generator=expected)
        assert torch.equal(g.get_state(), expected.get_state()), preset


def test_a_crop_keeps_at_least_crop_scale_of_the_area_inside_the_image() -> None:
    cfg = AugmentConfig(crop=1.0, crop_scale=0.5)
    theta = random_crop(1000, cfg, torch.Generator().manual_seed(0))
    sx, sy, cx, cy = theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2]
    area = sx * sy
    assert area.min() >= 0.5 - 1e-6 and area.max() <= 1.0 + 1e-6
    # the crop's edges (centre ± half side, in [-1, 1] coordinates) stay inside the image
    assert (cx.abs() + sx).max() <= 1 + 1e-6 and (cy.abs() + sy).max() <= 1 + 1e-6
    assert (theta[:, 0, 1] == 0).all() and (theta[:, 1, 0] == 0).all()


def test_a_crop_of_the_left_half_stretches_it_over_the_output() -> None:
    """sx=0.5, cx=-0.5 keeps the left half: output column j samples input column (2j - 1) / 4."""
    x = torch.arange(8.0).expand(1, 1, 4, 8)  # each pixel holds its column index
    theta = torch.tensor([[[0.5, 0.0, -0.5], [0.0, 1.0, 0.0]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 4, 8], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    expected = (2 * torch.arange(1.0, 8.0) - 1) / 4  # 0.25, 0.75, ..., 3.25: the left half only
    torch.testing.assert_close(out[0, 0, 0, 1:], expected)


def test_compose_applies_inner_then_outer() -> None:
    inner = torch.tensor([[[0.0, -1.0, 0.1], [1.0, 0.0, 0.2]]])  # a quarter turn and a shift
    outer = torch.tensor([[[0.5, 0.0, 0.3], [0.0, 2.0, -0.4]]])
    p = torch.tensor([0.7, -0.2, 1.0])
    via_inner = inner[0] @ p
    expected = outer[0] @ torch.cat([via_inner, torch.ones(1)])
    torch.testing.assert_close(compose(outer, inner)[0] @ p, expected)


def test_erased_pixels_share_one_grey_and_sit_on_the_border() -> None:
    x = torch.full((64, 1, 32, 32), 0.5)
    # Bands reach 0.2 of the side (6.4 px), corner squares 0.4 (12.8 px): the centre 13..18 never.
    x[:, :, 13:19, 13:19] = 0.25
    out = erase_border(x, AugmentConfig(erase=1.0, erase_size=0.2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :, 13:19, 13:19], x[:, :, 13:19, 13:19])
    changed = (out != x).flatten(1)
    assert changed.any(dim=1).float().mean() > 0.9  # a fill equal to 0.5 could hide a few
    for img, ch in zip(out, changed):
        vals = img.flatten()[ch].unique()
        assert len(vals) <= 1


def test_erase_probability_is_respected() -> None:
    x = torch.full((2000, 1, 8, 8), 0.5)
    out = erase_border(x, AugmentConfig(erase=0.3, erase_size=0.5), torch.Generator().manual_seed(0))
    share = (out != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.26 < share < 0.34


def test_the_glyph_bank_has_letters_texts_and_shapes_of_the_right_height() -> None:
    bank = glyph_bank()
    kinds = [n.split(":")[0] for n in bank.names]
    assert kinds.count("letter") >= 4 and "text" in kinds and "shape" in kinds
    assert {n.split(":")[1] for n in bank.names if n.startswith("letter")} == {"R", "L"}
    for m in bank.masks:
        assert m.shape[0] == 48 and m.min() >= 0 and m.max() > 0.99
        assert m[0].max() > 0 and m[-1].max() > 0  # cropped to the ink


def _pasted_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int]:
    rows = (after != before).any(dim=-1).nonzero().flatten()
    cols = (after != before).any(dim=-2).nonzero().flatten()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_a_pasted_marker_lands_in_a_corner_at_its_size() -> None:
    size, side = 0.15, 100
    cfg = AugmentConfig(marker=1.0, marker_size=size)
    x = torch.full((200, 1, side, side), 0.5)
    out = paste_markers(x, cfg, torch.Generator().manual_seed(0))
    corners = set()
    for before, after in zip(x[:, 0], out[:, 0]):
        top, bottom, left, right = _pasted_box(before, after)
        height = bottom - top + 1
        assert height <= size * side + 1 and height >= size * side / 3 - 2
        margin = 0.06 * side + 1
        near_top, near_bottom = top <= margin, bottom >= side - 1 - margin
        near_left, near_right = left <= margin, right >= side - 1 - margin
        assert near_top != near_bottom and near_left != near_right
        corners.add((near_top, near_left))
        ink = after[after != before]
        assert (ink > 0.5).all() or (ink < 0.5).all()  # white or black, never both
    assert len(corners) == 4


def test_markers_follow_their_probability_and_leave_the_input_alone() -> None:
    x = torch.full((1000, 1, 32, 32), 0.5)
    out = paste_markers(x, AugmentConfig(marker=0.25), torch.Generator().manual_seed(0))
    share = (out != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.21 < share < 0.29 and (x == 0.5).all()


def test_gamma_stays_within_its_exponent_range() -> None:
    g = 0.5
    x = torch.full((500, 1, 4, 4), 0.5)
    out = Augment(AugmentConfig(**NO_GEOMETRY, gamma=g))(x, generator=torch.Generator().manual_seed(0))
    v = out[:, 0, 0, 0]
    lo, hi = 0.5 ** (1 + g), 0.5 ** (1 / (1 + g))  # exponent in [1/1.5, 1.5]
    assert v.min() >= lo - 1e-6 and v.max() <= hi + 1e-6
    assert v.min() < 0.5 ** 1.4 and v.max() > 0.5 ** (1 / 1.4)  # the range is used
    assert (out == out[:, :, :1, :1]).all()  # one exponent per image


def test_contrast_scales_the_spread_around_the_mean_within_its_range() -> None:
    c = 0.3
    x = torch.zeros(500, 1, 2, 2)
    x[:, :, 0] = 0.4
    x[:, :, 1] = 0.6  # mean 0.5, spread 0.2
    out = Augment(AugmentConfig(**NO_GEOMETRY, contrast=c))(x, generator=torch.Generator().manual_seed(0))
    spread = out[:, 0, 1, 0] - out[:, 0, 0, 0]
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.full((500,), 0.5))
    assert spread.min() >= 0.2 * (1 - c) - 1e-6 and spread.max() <= 0.2 * (1 + c) + 1e-6
    assert spread.min() < 0.2 * (1 - 0.9 * c) and spread.max() > 0.2 * (1 + 0.9 * c)


def test_noise_has_at_most_its_standard_deviation() -> None:
    x = torch.full((200, 1, 64, 64), 0.5)
    out = Augment(AugmentConfig(**NO_GEOMETRY, noise=0.05))(x, generator=torch.Generator().manual_seed(0))
    sd = (out - x).flatten(1).std(dim=1)
    assert sd.max() < 0.05 * 1.1 and sd.min() < 0.01 and sd.mean() > 0.02  # uniform in [0, 0.05]


def test_robust_preset_is_repeatable_with_a_seed_and_in_range() -> None:
    aug = Augment(load_config("robust").augment)
    x = torch.rand(8, 1, 64, 64)
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape


@pytest.mark.parametrize(
    "key,value", [("marker", 1.5), ("erase", -0.1), ("crop_scale", 0.0), ("marker_size", 0.6), ("noise", 0.9)]
)
def test_breaker_settings_out_of_range_are_config_errors(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"augment.{key}"):
        AugmentConfig(**{key: value})


# --- the context swap ------------------------------------------------------------------------------
from pneumolens.augment import SWAP_MARGIN, lung_keep_weights, swap_context  # noqa: E402


def _left_lung_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 40 px films of constant greys 0.1..0.4 whose 'lungs' are columns 10-19, rows 10-29."""
    x = torch.stack([torch.full((1, 40, 40), 0.1 * (i + 1)) for i in range(4)])
    m = torch.zeros(4, 1, 40, 40)
    m[:, :, 10:30, 10:20] = 1.0
    return x, m


def test_the_swap_keeps_the_lungs_and_takes_the_rest_from_another_film() -> None:
    x, m = _left_lung_batch()
    cfg = AugmentConfig(**NO_GEOMETRY, swap=1.0)
    g = torch.Generator().manual_seed(3)
    out = swap_context(x, lung_keep_weights(m), cfg, g)
    g = torch.Generator().manual_seed(3)
    torch.rand(4, 1, 1, 1, generator=g)
    other = torch.randperm(4, generator=g)
    k = round(SWAP_MARGIN * 40)  # 1 px grown, 1 px blended
    for i in range(4):
        inside, far = out[i, 0, 10:30, 10:20], out[i, 0, :, 25:]
        assert torch.allclose(inside, x[i, 0, 0, 0].expand_as(inside)), i
        assert torch.allclose(far, x[other[i], 0, 0, 0].expand_as(far)), i  # beyond margin + blend
        seam = out[i, 0, 20, 20 + k]  # one step into the blend: between the two greys
        lo, hi = sorted((float(x[i, 0, 0, 0]), float(x[other[i], 0, 0, 0])))
        assert lo - 1e-6 <= float(seam) <= hi + 1e-6


def test_keep_weights_grow_the_lungs_by_the_margin_and_blend_over_as_much() -> None:
    """A step edge at column 20 (lungs left of it), k = 1 px at 40 px: grown to column 21, then a
    3-wide mean: 1 up to column 20, 2/3 at 21, 1/3 at 22, 0 from 23 (by hand)."""
    m = torch.zeros(1, 1, 40, 40)
    m[..., :20] = 1.0
    assert round(SWAP_MARGIN * 40) == 1
    row = lung_keep_weights(m)[0, 0, 20]
    torch.testing.assert_close(row[18:24], torch.tensor([1.0, 1.0, 2 / 3, 1 / 3, 0.0, 0.0]))


def test_the_swap_follows_its_probability_and_needs_the_masks() -> None:
    x, m = _left_lung_batch()
    x = x.repeat(100, 1, 1, 1)
    m = m.repeat(100, 1, 1, 1)
    out = Augment(AugmentConfig(**NO_GEOMETRY, swap=0.3))(x, generator=torch.Generator().manual_seed(0), masks=m)
    changed = (out[:, 0, :, 30:] != x[:, 0, :, 30:]).flatten(1).any(1).float().mean()
    assert 0.15 < float(changed) < 0.35  # swapped (with itself sometimes: unchanged) ~ 0.3 * 3/4
    with pytest.raises(ValueError, match="augment.swap needs each film's lung mask"):
        Augment(AugmentConfig(swap=0.5))(x)
    assert not AugmentConfig(swap=0.0).needs_lung_masks and AugmentConfig(swap=0.5).needs_lung_masks


def test_the_masks_are_resampled_with_their_films() -> None:
    """A horizontal flip moves the lung mask with the film: each film keeps its own (mirrored) lungs."""
    x, m = _left_lung_batch()
    for i in range(4):
        x[i, :, 10:30, 10:20] = 0.5 + 0.1 * i  # each film's 'lungs' have their own grey
    cfg = AugmentConfig(hflip=1.0, degrees=0.0, zoom=0.0, translate=0.0, swap=1.0)
    out = Augment(cfg)(x, generator=torch.Generator().manual_seed(0), masks=m)
    for i in range(4):  # mirrored to columns 20-29, and still the film's own
        assert torch.allclose(out[i, 0, 10:30, 20:30], torch.full((20, 10), 0.5 + 0.1 * i)), i
    assert not torch.allclose(out[:, 0, 10:30, 12:18], x[:, 0, 10:30, 12:18])  # others' surroundings came in


def test_training_data_comes_with_lung_masks_only_when_the_swap_is_on(synthetic_dataset) -> None:
    from pneumolens.audit.lungs import lung_mask
    from pneumolens.datamodule import PneumoniaDataModule

    for swap in (0.0, 0.5):
        cfg = load_config("debug", overrides={"augment": {"swap": swap}})
        dm = PneumoniaDataModule.from_config(cfg, synthetic_dataset, progress=False)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert len(batch) == (3 if swap else 2)
    images, _, keep = batch
    assert keep.shape == (len(images), 1, *images.shape[1:]) and keep.dtype == torch.uint8
    mask = torch.from_numpy(lung_mask(images[0].numpy()).mask)[None, None]
    assert torch.equal(keep[0], (lung_keep_weights(mask)[0] * 255).round().to(torch.uint8))
    assert keep.max() == 255 and keep.min() == 0
