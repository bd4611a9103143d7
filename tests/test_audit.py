"""The shortcut audit: probe geometry, scoring, lung fields, planted-marker models, the command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pneumolens.audit import lung_mask, marker_flip_rate, outside_share, peak_outside, summarize
from pneumolens.audit.lungs import prior_lungs
from pneumolens.audit.probes import (
    CORNERS,
    annotation_probes,
    assign,
    border_probes,
    default_probes,
    draw_ruler,
    marker_probes,
    paste_letter,
    paste_text,
    replace_border,
    text_alpha,
)
from pneumolens.audit.scoring import predict_probed
from pneumolens.cli import main


def ink_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of the pixels a probe changed."""
    rows, cols = np.nonzero(before != after)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


# ------------------------------------------------------------------------------------------ probes


@pytest.mark.parametrize("corner", CORNERS)
def test_letter_lands_in_the_chosen_corner_at_the_asked_height(corner: str) -> None:
    film = np.full((200, 300), 40, np.uint8)
    out = paste_letter(film, "R", "sans", height=0.10, corner=corner)
    top, bottom, left, right = ink_box(film, out)
    assert bottom - top + 1 == 20  # 10 % of 200 rows
    margin = 8  # 4 % of 200
    if corner.startswith("top"):
        assert top == margin
    else:
        assert bottom == 200 - margin - 1
    if corner.endswith("left"):
        assert left == margin
    else:
        assert right == 300 - margin - 1
    assert out.max() == 255  # white ink
    assert (out[80:120, 120:180] == 40).all()  # the middle of the film untouched
    assert (film == 40).all()  # the input is not modified


@pytest.mark.parametrize("font", ["sans", "serif", "mono"])
@pytest.mark.parametrize("letter", ["R", "L"])
def test_glyph_height_is_the_asked_number_of_pixels_for_every_font(font: str, letter: str) -> None:
    for height in (5, 12, 31):
        assert abs(text_alpha(letter, font, height).shape[0] - height) <= 1


def test_border_band_has_the_asked_width_and_fill() -> None:
    film = np.zeros((100, 150), np.uint8)
    film[:50] = 10
    film[50:] = 30  # median = (10 + 30) / 2 = 20
    out = replace_border(film, width=0.08, fill="median")
    band = 8  # 8 % of the shorter side (100)
    assert (out[:band] == 20).all() and (out[-band:] == 20).all()
    assert (out[:, :band] == 20).all() and (out[:, -band:] == 20).all()
    assert (out[band:-band, band:-band] == film[band:-band, band:-band]).all()
    assert (replace_border(film, 0.04, "black")[:4] == 0).all()
    assert (replace_border(film, 0.04, "white")[:, -4:] == 255).all()
    assert replace_border(film, 0.04, "white")[4, 4] == 10  # just inside the 4-pixel band


def test_text_is_centred_at_the_top_or_bottom() -> None:
    film = np.zeros((200, 300), np.uint8)
    top, bottom, left, right = ink_box(film, paste_text(film, "AP PORTABLE", "top"))
    assert top == 8 and bottom - top + 1 == 8  # margin 4 %, ink 4 % of 200
    assert abs((left + right) / 2 - 149.5) <= 1
    top, bottom, _, _ = ink_box(film, paste_text(film, "SUPINE", "bottom"))
    assert bottom == 200 - 8 - 1


def test_ruler_runs_along_its_edge_with_ticks_pointing_in() -> None:
    film = np.zeros((200, 300), np.uint8)
    out = draw_ruler(film, "right")
    top, bottom, left, right = ink_box(film, out)
    assert (top, bottom) == (40, 159)  # the middle 60 % of 200 rows
    assert right == 300 - 8 - 1  # 4 % of the height inside the edge, 2 px thick line
    assert left >= 300 - 8 - 2 - 2 * 6  # the long ticks: 2 x 2 % of the width
    column = out[40:160, 290]
    assert (column == 255).all()  # the line itself is continuous
    assert len(np.unique(np.nonzero(out[:, 270:288])[0])) > 10  # ticks on many rows
    top, bottom, left, right = ink_box(film, draw_ruler(film, "bottom"))
    assert bottom == 200 - 8 - 1 and (left, right) == (60, 239)


def test_probe_sets_and_their_names() -> None:
    probes = default_probes()
    assert [len(probes[f]) for f in ("marker", "border", "annotation")] == [72, 6, 4]
    names = [p.name for family in probes.values() for p in family]
    assert len(set(names)) == len(names)
    assert len(marker_probes(fonts=("sans",), heights=(0.09,))) == 8
    film = np.zeros((50, 60), np.uint8)
    for p in border_probes() + annotation_probes():
        assert p.apply(film).shape == (50, 60)
    with pytest.raises(ValueError, match="uint8"):
        border_probes()[0].apply(np.zeros((50, 60), np.float32))


def test_each_film_gets_distinct_markers_and_every_marker_is_used_equally() -> None:
    plan = assign(60, 72, per_film=12, seed=5)
    assert all(len(set(p)) == 12 for p in plan)
    counts = np.bincount([j for p in plan for j in p], minlength=72)
    assert (counts == 10).all()  # 60 films x 12 / 72 probes
    assert plan == assign(60, 72, per_film=12, seed=5)
    assert plan != assign(60, 72, per_film=12, seed=6)
    assert assign(3, 4, per_film=None, seed=0) == [[0, 1, 2, 3]] * 3


# ------------------------------------------------------------------------------------------ scoring


def test_summary_counts_flips_and_specificity_by_hand() -> None:
    s = summarize(
        p_clean=np.array([0.2, 0.2, 0.8, 0.8]),
        p_probe=np.array([0.6, 0.3, 0.8, 0.4]),
        labels=np.array([0, 0, 1, 1]),
        threshold=0.5,
        films=np.array([0, 1, 2, 3]),
    )
    assert s["flips"] == 2 and s["flip_rate"] == 0.5
    assert (s["flips_to_pneumonia"], s["flips_to_normal"]) == (1, 1)
    assert s["abs_dp"]["median"] == pytest.approx(0.25) and s["abs_dp"]["max"] == pytest.approx(0.4)
    assert s["mean_dp"] == pytest.approx((0.4 + 0.1 + 0.0 - 0.4) / 4)
    assert s["specificity"] == {"clean": 1.0, "probed": 0.5, "delta": -0.5}
    assert s["sensitivity"] == {"clean": 1.0, "probed": 0.5, "delta": -0.5}
    one_class = summarize(np.array([0.5]), np.array([0.49]), np.array([1]), 0.5)
    assert one_class["specificity"]["clean"] is None and one_class["flip_rate"] == 1.0  # p == threshold is PNEUMONIA


def films(n: int = 6, shape: tuple[int, int] = (96, 120), seed: int = 0) -> list[np.ndarray]:
    """Grey noisy films whose pixels stay in 60..140."""
    rng = np.random.default_rng(seed)
    return [rng.integers(60, 141, size=shape, dtype=np.uint8) for _ in range(n)]


def corner_model(images: np.ndarray) -> np.ndarray:
    """A model that DOES use a planted marker: P rises with the brightest pixel of any corner patch (20 %)."""
    x = np.asarray(images, np.float64)
    h, w = x.shape[1:]
    ph, pw = int(0.2 * h), int(0.2 * w)
    corners = [x[:, :ph, :pw], x[:, :ph, -pw:], x[:, -ph:, :pw], x[:, -ph:, -pw:]]
    brightest = np.max([c.max(axis=(1, 2)) for c in corners], axis=0)
    return 1.0 / (1.0 + np.exp(-(brightest - 200.0) / 10.0))


def centre_model(images: np.ndarray) -> np.ndarray:
    """A model that does NOT: P from the mean of the central 30 % of the image only."""
    x = np.asarray(images, np.float64)
    h, w = x.shape[1:]
    centre = x[:, int(0.35 * h) : int(0.65 * h), int(0.35 * w) : int(0.65 * w)]
    return 1.0 / (1.0 + np.exp(-(centre.mean(axis=(1, 2)) - 100.0) / 5.0))


def test_a_model_reading_corner_markers_flips_on_every_marker() -> None:
    images = np.stack(films())
    labels = [0, 0, 0, 1, 1, 1]
    # clean: brightest corner pixel <= 140, p <= sigmoid(-6) < 0.5; marked: a white (255) stroke, p > 0.99
    assert marker_flip_rate(corner_model, images, labels, threshold=0.5) == 1.0
    assert marker_flip_rate(centre_model, images, labels, threshold=0.5) == 0.0


def test_a_model_reading_only_the_centre_never_moves_under_any_probe() -> None:
    probes = [p for family in default_probes().values() for p in family]
    plan = assign(4, len(probes), None, seed=0)
    p_clean, film, _, p_probe = predict_probed(centre_model, films(4), probes, plan, size=64)
    assert len(p_probe) == 4 * len(probes)
    np.testing.assert_array_equal(p_probe, p_clean[film])  # the centre is never touched: Δp is exactly 0


def test_the_corner_model_flips_on_markers_drawn_before_the_resize() -> None:
    probes = marker_probes(heights=(0.12,))  # the audit's largest letters survive the resize to 64 px
    plan = assign(4, len(probes), None, seed=0)
    p_clean, film, _, p_probe = predict_probed(corner_model, films(4), probes, plan, size=64)
    s = summarize(p_clean[film], p_probe, np.zeros(len(film), np.int64), 0.5, films=film)
    assert s["flip_rate"] == 1.0 and s["specificity"] == {"clean": 1.0, "probed": 0.0, "delta": -1.0}


# ------------------------------------------------------------------------------------------ lung fields


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """A 128 px chest phantom: air 10, body 170, two dark (60) elliptic lungs; and the lungs' true mask."""
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    body = ((yy - 0.5) / 0.6) ** 2 + ((xx - 0.5) / 0.42) ** 2 <= 1
    lungs = np.zeros((128, 128), bool)
    for cx in (0.30, 0.70):
        lungs |= ((yy - 0.45) / 0.26) ** 2 + ((xx - cx) / 0.11) ** 2 <= 1
    image = np.where(body, 170, 10).astype(np.uint8)
    image[lungs] = 60
    return image, lungs


def test_lung_mask_finds_the_lungs_of_a_phantom() -> None:
    image, truth = phantom()
    lm = lung_mask(image)
    iou = (lm.mask & truth).sum() / (lm.mask | truth).sum()
    assert lm.status == "refined" and iou > 0.85


def test_a_flat_image_falls_back_to_the_prior() -> None:
    lm = lung_mask(np.full((64, 64), 128, np.uint8))
    assert lm.sides == ("prior", "prior")
    np.testing.assert_array_equal(lm.mask, prior_lungs((64, 64)))
    with pytest.raises(ValueError, match="2-D"):
        lung_mask(np.zeros((8, 8), np.uint8))


def test_share_outside_the_lungs_by_hand() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True
    amap = np.full((4, 4), -5.0)
    amap[0, 0], amap[0, 3] = 3.0, 1.0
    assert outside_share(amap, mask) == pytest.approx(1 / 4)  # 1 of the 3 + 1 positive mass is outside
    assert peak_outside(amap, mask) is False
    assert outside_share(np.full((4, 4), -1.0), mask) is None and peak_outside(np.full((4, 4), -1.0), mask) is None
    assert outside_share(np.ones((4, 4)), mask) == pytest.approx(0.5)  # an even map: the share of the image outside
    with pytest.raises(ValueError, match="shape"):
        outside_share(np.ones((4, 5)), mask)


def test_share_is_near_one_for_a_corner_map_and_near_zero_inside_the_mask() -> None:
    image, _ = phantom()
    mask = lung_mask(image).mask
    corner = np.zeros((128, 128))
    corner[:12, :12] = 1.0
    assert outside_share(corner, mask) == 1.0 and peak_outside(corner, mask) is True
    inside = np.where(mask, 1.0, 0.0) + np.random.default_rng(0).normal(0, 1e-3, (128, 128)).clip(-1e-3, 0)
    assert outside_share(inside, mask) == pytest.approx(0.0, abs=1e-9)


def test_share_summary_by_true_class_by_hand() -> None:
    from pneumolens.audit.attribution import summarize_shares

    result = {"share": [0.9, 0.5, None, 0.7, 0.3], "peak_outside": [True, False, None, True, False], "seconds": 5.0}
    masks = np.zeros((5, 2, 2), bool)
    masks[:, 0, 0] = True  # a quarter of every film: chance 0.75
    s = summarize_shares(result, masks, labels=[0, 0, 0, 1, 1])
    assert s["n_valid"] == 4 and s["share_outside"]["median"] == pytest.approx(0.6)
    assert s["uniform_share"] == pytest.approx(0.75) and s["seconds_per_film"] == pytest.approx(1.0)
    # NORMAL: 0.9, 0.5 (the third film had no positive evidence); PNEUMONIA: 0.7, 0.3
    assert s["by_class"] == {"NORMAL": {"n_films": 3, "n_valid": 2, "median": pytest.approx(0.7)},
                             "PNEUMONIA": {"n_films": 2, "n_valid": 2, "median": pytest.approx(0.5)}}
    assert "by_class" not in summarize_shares(result, masks)
    only_normal = summarize_shares(result, masks, labels=[0, 0, 0, 0, 0])["by_class"]
    assert only_normal["PNEUMONIA"] == {"n_films": 0, "n_valid": 0, "median": None}


def test_share_panel_colours_each_class_apart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pneumolens.audit import figures

    saved = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.setdefault("fig", fig))
    images = np.zeros((4, 16, 16), np.uint8)
    masks = np.zeros((4, 16, 16), bool)
    maps = {"gradcam": np.ones((4, 16, 16), np.float32)}
    summary = {"gradcam": {"share_per_film": [0.9, None, 0.5, 0.7], "uniform_share": 0.75}}
    figures.plot_lungs(images, masks, maps, summary, [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5, tmp_path / "x.png")
    panel = saved["fig"].axes[-1]
    dots = {c.get_label(): sorted(c.get_offsets()[:, 1]) for c in panel.collections if c.get_label().endswith("films")}
    # NORMAL: 0.9 (the second film has no positive evidence); PNEUMONIA: 0.5 and 0.7
    assert dots == {"NORMAL films": [0.9], "PNEUMONIA films": [0.5, 0.7]}
    assert [t.get_text() for t in panel.get_legend().get_texts()] == ["NORMAL films", "PNEUMONIA films",
                                                                      "chance (even map): 75%"]


# ------------------------------------------------------------------------------------------ the command


def test_subsets_keep_the_class_proportions_or_balance_them() -> None:
    from pneumolens.audit.run import pick

    labels = [0] * 30 + [1] * 90
    chosen = pick(labels, 40, seed=1)
    assert len(chosen) == 40 and sum(labels[i] for i in chosen) == 30  # 3/4 PNEUMONIA, as in the split
    assert chosen == sorted(chosen) == pick(labels, 40, seed=1) != pick(labels, 40, seed=2)
    balanced = pick(labels, 20, seed=1, balanced=True)
    assert sum(labels[i] for i in balanced) == 10
    few_normal = [0] * 3 + [1] * 30
    assert sum(few_normal[i] for i in pick(few_normal, 10, seed=0, balanced=True)) == 7  # only 3 NORMAL to take
    assert pick(labels, None, seed=0) == list(range(120))


def read_json_strict(path: Path) -> dict:
    def no_constant(name: str) -> None:
        raise AssertionError(f"bare {name} in {path}")

    return json.loads(path.read_text(), parse_constant=no_constant)


@pytest.mark.slow
def test_audit_command_writes_every_output_and_is_deterministic(
    tmp_path: Path, trained_tiny_checkpoint_path: Path, synthetic_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code = main(["audit", "--checkpoint", str(trained_tiny_checkpoint_path), "--data", str(synthetic_dataset),
                     "--split", "val", "--out", str(out), "--explain-n", "4", "--methods", "gradcam",
                     "--markers-per-film", "5", "--no-progress"])
        assert code == 0
        runs.append(read_json_strict(out / "metrics.json"))
    m = runs[0]
    assert (m["n_films"], m["n_normal"], m["n_pneumonia"]) == (8, 4, 4)
    assert [f["n_pairs"] for f in m["probes"]["families"].values()] == [8 * 5, 8 * 6, 8 * 4]
    assert m["quick_marker"]["n_pairs"] == 8 * 8
    g = m["explanations"]["methods"]["gradcam"]
    assert g["n_films"] == 4 and 0.0 < g["uniform_share"] < 1.0
    # the 4 explained films are balanced: 2 per class, each class summarised apart
    assert {c: v["n_films"] for c, v in g["by_class"].items()} == {"NORMAL": 2, "PNEUMONIA": 2}
    for key in ("seconds", "command"):
        runs[0].pop(key), runs[1].pop(key)
    for r in runs:
        for s in r["explanations"]["methods"].values():
            s.pop("seconds_per_film")
    assert runs[0] == runs[1]
    out = tmp_path / "a"
    for name in ("report.md", "probes.png", "lungs.png"):
        assert (out / name).stat().st_size > 1000
    with open(out / "films.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and "share_outside_gradcam" in rows[0]
    with open(out / "probes.csv") as fh:
        assert sum(1 for _ in fh) == 1 + 8 * (5 + 6 + 4)
    report = (out / "report.md").read_text()
    assert "laterality marker" in report and "![probes](probes.png)" in report
    assert "median: NORMAL / PNEUMONIA films" in report
    c = m["context_swap"]
    assert (c["pairs"], set(c["kinds"])) == (4, {"normal_lungs", "pneumonia_lungs"})
    assert 0 <= c["followed"] <= c["informative"] <= 8 and "## Context swap: does the answer follow the lungs?" in report
    # the trained tiny model tells some pairs apart, so the figure is drawn and shown
    assert c["informative"] > 0 and (out / "context.png").stat().st_size > 1000
    assert "![context swap](context.png)" in report
    printed = capsys.readouterr().out
    assert "context swap:" in printed
    assert "flip rate" in printed and "NORMAL films" in printed and "PNEUMONIA films" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "nonsense"], "--methods: unknown method"),
        (["--data", "/nonexistent/folder"], "data folder does not exist"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, tiny_checkpoint_path: Path, synthetic_dataset: Path,
                                         capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    args = ["audit", "--checkpoint", str(tiny_checkpoint_path), "--data", str(synthetic_dataset), "--split", "val",
            "--out", str(tmp_path / "out"), "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_context_swap_pairs_are_counted_in_the_audit_and_zero_skips_them(
    tmp_path: Path, tiny_checkpoint_path: Path, synthetic_dataset: Path
) -> None:
    """The audit's context swap is the library's on the same model inputs (its clean probabilities
    reused, not recomputed); 0 pairs leaves it out."""
    from pneumolens.audit import run_audit
    from pneumolens.audit.context import context_swap
    from pneumolens.audit.lungs import lung_mask
    from pneumolens.checkpoint import load_checkpoint
    from pneumolens.evaluate import split_records
    from pneumolens.inference import Predictor
    from pneumolens.io import load_image

    kw = {"checkpoint": tiny_checkpoint_path, "data": synthetic_dataset, "split": "val", "explain_n": 0,
          "methods": "", "markers_per_film": 1, "progress": False}
    m = run_audit(out=tmp_path / "a", context_pairs=3, **kw)
    predictor = Predictor(load_checkpoint(tiny_checkpoint_path))
    records = split_records(synthetic_dataset, "val")
    films = np.stack([load_image(r.path, predictor.size) for r in records])
    direct = context_swap(films, np.stack([lung_mask(f).mask for f in films]), [r.label for r in records],
                          predictor.probabilities, predictor.threshold, n_pairs=3)
    got = m["context_swap"]
    assert got["pairs"] == 3 and _without_kinds(got) == _without_kinds(direct)
    for kind, values in direct["kinds"].items():
        assert got["kinds"][kind] == pytest.approx(values)
    for mine, theirs in zip(got["per_pair"], direct["per_pair"], strict=True):
        assert mine == pytest.approx(theirs)
    assert "## Context swap" in (tmp_path / "a" / "report.md").read_text()
    m = run_audit(out=tmp_path / "b", context_pairs=0, **kw)
    report = (tmp_path / "b" / "report.md").read_text()
    assert m["context_swap"] is None and "## Context swap" in report and "Not run (`--context-pairs 0`)." in report


def _without_kinds(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("kinds", "per_pair")}


def test_films_of_one_class_say_the_context_swap_was_not_measured(
    tmp_path: Path, tiny_checkpoint_path: Path, synthetic_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--checkpoint", str(tiny_checkpoint_path), "--data", str(synthetic_dataset), "--split",
                 "val", "--n", "1", "--explain-n", "0", "--methods", "", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "context swap: not measured" in capsys.readouterr().out
    assert "Not measured: 0 NORMAL/PNEUMONIA pairs" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "context.png").exists()


def test_negative_context_pairs_are_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--context-pairs", "-1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--context-pairs: -1 must be >= 0" in err and err.count("\n") == 1


def test_the_context_pairs_default_is_the_same_in_the_command_and_the_library() -> None:
    from pneumolens.audit.context import CONTEXT_PAIRS
    from pneumolens.commands import audit as command

    assert command.CONTEXT_PAIRS == CONTEXT_PAIRS


def test_zero_films_is_refused_by_the_parser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--n", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--n: 0 must be >= 1" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
def test_audit_of_the_shipped_model_on_real_validation_films(tmp_path: Path, real_data_root: Path) -> None:
    from pneumolens.audit import run_audit

    m = run_audit(data=real_data_root, split="validation", out=tmp_path, n=10, explain_n=2, methods="gradcam",
                  markers_per_film=4, progress=False)
    assert m["n_films"] == 10 and m["explanations"]["n_films"] == 2
    for family in m["probes"]["families"].values():
        assert 0.0 <= family["flip_rate"] <= 1.0
    assert 0.1 < m["lungs"]["mean_area"] < 0.5  # lung fields cover a fifth to a third of a frontal film
    read_json_strict(tmp_path / "metrics.json")
