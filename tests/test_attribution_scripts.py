"""The scripts: compare_audits.py and cv_attribution.py (pairing and tables, on hand-made audits),
cv_calibration.py (scores by hand, on hand-made folds) and ship_model.py's refusals."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    if str(SCRIPTS) not in sys.path:  # as when a script runs: its siblings (markdown_output, results_table) import
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _audit(films: list[str], shares: dict[str, list[float | None]]) -> dict:
    return {"explanations": {"films": films, "methods": {
        label: {"share_per_film": s, "uniform_share": 0.75} for label, s in shares.items()}}}


def test_compare_pairs_films_by_name_and_drops_films_without_positive_evidence() -> None:
    compare = _script("compare_audits")
    a = _audit(["f1", "f2", "f3", "f4"], {"gradcam": [0.9, 0.8, None, 0.7], "ig": [0.6, 0.6, 0.6, 0.6]})
    # B explained the same films in another order, one more film, and lacks ig on nothing
    b = _audit(["f4", "f3", "f2", "f1", "f9"], {"gradcam": [0.5, 0.9, 0.8, 0.6, 0.1], "ig": [0.7, 0.7, 0.7, 0.7, 0.0]})
    r = compare.paired(a, b)
    g = r["gradcam"]
    # pairs (A, B): f1 (0.9, 0.6), f2 (0.8, 0.8), f4 (0.7, 0.5); f3 has no A map, f9 no A film
    assert g["films"] == 3 and sorted(g["pairs"]) == sorted([(0.9, 0.6), (0.8, 0.8), (0.7, 0.5)])
    assert g["median_a"] == pytest.approx(0.8) and g["median_b"] == pytest.approx(0.6)
    diffs = [-0.3, 0.0, -0.2]
    assert g["mean_diff"] == pytest.approx(sum(diffs) / 3)
    sd = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert g["se_diff"] == pytest.approx(sd / math.sqrt(3))
    assert g["b_lower"] == 2
    assert r["ig"]["films"] == 4 and r["ig"]["mean_diff"] == pytest.approx(0.1) and r["ig"]["b_lower"] == 0
    text = compare.markdown(r, ("old", "new"), 0.75)
    assert "| gradcam | 3 | 80.0 % | 60.0 % | -16.7 ± 8.8 points | 2 of 3 |" in text
    assert "75.0 % outside" in text


def test_compare_refuses_audits_of_different_films() -> None:
    compare = _script("compare_audits")
    with pytest.raises(SystemExit, match="no film in common"):
        compare.paired(_audit(["a"], {"gradcam": [0.5]}), _audit(["b"], {"gradcam": [0.5]}))


def test_compare_writes_table_json_and_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compare = _script("compare_audits")
    for name, shares in (("old", [0.9, 0.8, 0.7]), ("new", [0.6, 0.8, 0.5])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_audit(["x", "y", "z"], {"gradcam": shares})))
    out = tmp_path / "cmp"
    monkeypatch.setattr(sys, "argv", ["compare_audits.py", str(tmp_path / "old"), str(tmp_path / "new"),
                                      "--names", "old", "new", "--out", str(out)])
    compare.main()
    saved = json.loads((out / "compare.json").read_text())
    assert saved["gradcam"]["films"] == 3 and saved["gradcam"]["b_lower"] == 2
    assert (out / "compare.png").stat().st_size > 1000 and "| gradcam | 3 |" in (out / "compare.md").read_text()


def test_compare_names_an_unreadable_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compare = _script("compare_audits")
    monkeypatch.setattr(sys, "argv", ["compare_audits.py", str(tmp_path / "none"), str(tmp_path / "none2")])
    with pytest.raises(SystemExit, match=r"none/metrics.json: cannot read an audit's metrics"):
        compare.main()


def test_cv_attribution_table_gives_mean_and_sd_over_folds() -> None:
    cv_attr = _script("cv_attribution")
    rows = [
        {"recipe": "r1", "fold": 0, "median": {"gradcam": 0.90}, "valid": {"gradcam": 30}, "chance": 0.76,
         "auc": 0.99, "flip": 0.01, "border": 0.05, "text": 0.02},
        {"recipe": "r1", "fold": 1, "median": {"gradcam": 0.80}, "valid": {"gradcam": 40}, "chance": 0.76,
         "auc": 0.98, "flip": 0.03, "border": 0.07, "text": None},
        {"recipe": "r2", "fold": 0, "median": {"gradcam": None}, "valid": {"gradcam": 0}, "chance": 0.75,
         "auc": None, "flip": None, "border": None, "text": None},
    ]
    text = cv_attr.table(rows, ["gradcam"])
    # r1: mean 0.85, sd of (0.9, 0.8) = 0.0707; AUC mean 0.985, flips 0.02, border 0.06, text 0.02 (one fold)
    assert "| r1 | 0,1 | 85.0 ± 7.1 % | 76.0 ± 0.0 % | 0.985 | 0.020 | 0.060 | 0.020 |" in text
    assert "| r2 | 0 |  | 75.0 % |  |  |  |  |" in text
    assert "| r1 | 1 | 80.0 % | 40 |" in text and "| r2 | 0 | n/a | 0 |" in text


def test_flip_rates_come_from_the_audits_probe_families() -> None:
    cv_attr = _script("cv_attribution")
    metrics = {"probes": {"families": {"border": {"flip_rate": 0.125}, "annotation": {"flip_rate": 0.0}}}}
    assert cv_attr._flip_rate(metrics, "border") == 0.125 and cv_attr._flip_rate(metrics, "annotation") == 0.0
    assert cv_attr._flip_rate(metrics, "marker") is None and cv_attr._flip_rate({}, "border") is None


def test_cv_attribution_reuses_a_fold_audit_with_the_same_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cv_attr = _script("cv_attribution")
    fold = tmp_path / "fold-0"
    (fold / "audit-attribution").mkdir(parents=True)
    spec = "gradcam:layer=features.block3.pool"
    saved = {"attribution_settings": {"n": 120, "explain_n": 40, "methods": spec}, "explanations": {}}
    (fold / "audit-attribution" / "metrics.json").write_text(json.dumps(saved))
    calls = []
    monkeypatch.setattr(cv_attr, "run_audit", lambda **kw: calls.append(kw) or {"explanations": {}})
    assert cv_attr.audit_fold(fold, tmp_path, 120, 40, spec, None, fresh=False) == saved and not calls
    # other settings, or --fresh: the audit runs again and its settings are stored with it
    again = cv_attr.audit_fold(fold, tmp_path, 120, 20, spec, None, fresh=False)
    assert len(calls) == 1 and calls[0]["explain_n"] == 20 and calls[0]["split"] == "validation"
    assert again["attribution_settings"] == {"n": 120, "explain_n": 20, "methods": spec}
    cv_attr.audit_fold(fold, tmp_path, 120, 20, spec, None, fresh=True)
    assert len(calls) == 2


def test_a_bare_gradcam_cache_is_reused_only_under_the_same_default_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gradcam` alone means the default layer at the time: an audit cached before the default moved
    (no layer recorded, or another one) is run again; one under today's default is reused."""
    from pneumolens.explain.gradcam import DEFAULT_BLOCK_PART

    cv_attr = _script("cv_attribution")
    folder = tmp_path / "audit-attribution"
    folder.mkdir()
    calls = []
    monkeypatch.setattr(cv_attr, "run_audit", lambda **kw: calls.append(kw) or {"explanations": {}})
    other = "pool" if DEFAULT_BLOCK_PART != "pool" else "relu"
    cases = (({}, False), ({"gradcam_default": other}, False), ({"gradcam_default": DEFAULT_BLOCK_PART}, True))
    for stored, reused in cases:
        saved = {"attribution_settings": {"n": 120, "explain_n": 40, "methods": "gradcam,ig", **stored}}
        (folder / "metrics.json").write_text(json.dumps(saved))
        before = len(calls)
        cv_attr.audit_fold(tmp_path, tmp_path, 120, 40, "gradcam,ig", None, fresh=False)
        assert (len(calls) == before) == reused, stored
    assert "gradcam_default" not in cv_attr.audit_settings(120, 40, cv_attr.METHODS)


def test_cv_attribution_plot_draws_a_panel_per_method(tmp_path: Path) -> None:
    cv_attr = _script("cv_attribution")
    rows = [{"recipe": f"r{i % 2}", "fold": i, "median": {"gradcam": 0.8 + 0.05 * i, "ig": None if i == 3 else 0.6},
             "valid": {}, "chance": 0.76, "auc": None, "flip": None} for i in range(4)]
    cv_attr.plot(rows, ["gradcam", "ig"], tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 5000


def test_cv_attribution_axis_starts_left_of_the_lowest_share() -> None:
    """A fold whose share lies below 50 % (a swap-trained fold's Integrated Gradients) stays on the plot."""
    cv_attr = _script("cv_attribution")

    def rows(*shares: float | None) -> list[dict]:
        return [{"recipe": "r", "fold": i, "median": {"ig": x}} for i, x in enumerate(shares)]

    assert cv_attr.axis_start(rows(0.62, None, 0.9), ["ig"]) == 0.5
    assert cv_attr.axis_start(rows(0.62, 0.489), ["ig"]) == pytest.approx(0.459)


def test_untrained_baseline_is_the_shipped_architecture_reinitialised_reproducibly() -> None:
    import torch

    from pneumolens.checkpoint import load_checkpoint

    cv_attr = _script("cv_attribution")
    shipped = load_checkpoint(None).model.state_dict()
    a, b = cv_attr.untrained(0).model.state_dict(), cv_attr.untrained(0).model.state_dict()
    assert a.keys() == shipped.keys()
    weights = [k for k in a if k.endswith("weight") and a[k].dtype.is_floating_point]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)  # seeded: the same twice
    assert all(not torch.equal(a[k], shipped[k]) for k in weights if a[k].numel() > 1 and not k.endswith("bn.weight"))
    assert cv_attr.title("gradcam") == "Grad-CAM (default layer)" and cv_attr.title("ig") == "Integrated Gradients"


def test_cv_attribution_names_a_folder_that_is_not_a_cross_validation(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cv_attr = _script("cv_attribution")
    monkeypatch.setattr(sys, "argv", ["cv_attribution.py", str(tmp_path), "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"error: .*cv.json: no cross-validation summary here"):
        cv_attr.main()


def test_compare_splits_by_true_class_when_films_csv_gives_labels(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    compare = _script("compare_audits")
    films = ["n1", "n2", "p1", "p2"]
    for name, shares in (("old", [0.7, 0.8, 0.9, 0.9]), ("new", [0.9, 0.9, 0.8, 0.9])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_audit(films, {"gradcam": shares})))
        (tmp_path / name / "films.csv").write_text("file,label,p_clean\nn1,0,0.1\nn2,0,0.2\np1,1,0.9\np2,1,0.8\n")
    out = tmp_path / "cmp"
    monkeypatch.setattr(sys, "argv", ["compare_audits.py", str(tmp_path / "old"), str(tmp_path / "new"),
                                      "--names", "old", "new", "--out", str(out)])
    compare.main()
    saved = json.loads((out / "compare.json").read_text())["gradcam"]
    # NORMAL: (0.7, 0.9), (0.8, 0.9): +0.15 on average, none lower; PNEUMONIA: (0.9, 0.8), (0.9, 0.9): -0.05, one lower
    assert saved["by_class"]["0"]["mean_diff"] == pytest.approx(0.15) and saved["by_class"]["0"]["b_lower"] == 0
    assert saved["by_class"]["1"]["mean_diff"] == pytest.approx(-0.05) and saved["by_class"]["1"]["b_lower"] == 1
    text = (out / "compare.md").read_text()
    assert "| gradcam, NORMAL | 2 | 75.0 % | 90.0 % | +15.0 ± 5.0 points | 0 of 2 |" in text
    assert "| gradcam, PNEUMONIA | 2 | 90.0 % | 85.0 % | -5.0 ± 5.0 points | 1 of 2 |" in text


# --- scripts/cv_calibration.py ---------------------------------------------------------------------
def test_calibration_scores_by_hand() -> None:
    cal = _script("cv_calibration")
    import numpy as np

    s = cal.scores(np.array([0, 1]), np.array([0.2, 0.6]))
    assert s["brier"] == pytest.approx((0.2**2 + 0.4**2) / 2)
    assert s["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # 15 bins: 0.2 and 0.6 sit alone, off by 0.2 and 0.4
    assert s["ece"] == pytest.approx((0.2 + 0.4) / 2)


def _calibration_cv(out: Path, shift: float, legacy_t: float | None = None) -> Path:
    """Two folds of 600 films (300 patients, two films each) whose raw logits sit ``shift`` below
    calibrated ones; ``legacy_t``: fold 0's oof.csv keeps only probabilities at that temperature."""
    import numpy as np

    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    folds = []
    for k in range(2):
        folder = out / f"fold-{k}"
        folder.mkdir()
        true = np.repeat(rng.normal(0.5, 2.0, 300), 2)
        y = (rng.random(600) < 1 / (1 + np.exp(-true))).astype(int)
        z = true - shift
        lines = ["file,patient,label,fold,probability,logit"]
        for i in range(600):
            if k == 0 and legacy_t is not None:
                lines.append(f"f{i},p{k}-{i // 2},{y[i]},{k},{1 / (1 + math.exp(-z[i] / legacy_t)):.6f},")
            else:
                lines.append(f"f{i},p{k}-{i // 2},{y[i]},{k},0.5,{z[i]:.6f}")
        (folder / "oof.csv").write_text("\n".join(lines) + "\n")
        fold = {"fold": k, "temperature": legacy_t if (k == 0 and legacy_t) else 1.0}
        (folder / "fold.json").write_text(json.dumps(fold))
        folds.append(fold)
    summary = {"label": out.name, "folds": 2, "done": [0, 1], "max_epochs": 1, "per_fold": folds,
               "mean_sd": {k: {"mean": None, "sd": None} for k in
                           ("roc_auc", "sensitivity", "specificity", "accuracy", "marker_flip_rate")}}
    (out / "cv.json").write_text(json.dumps(summary))
    return out


def test_platt_beats_temperature_on_off_centre_logits_and_ties_on_centred_ones(tmp_path: Path) -> None:
    cal = _script("cv_calibration")
    off = cal.cv_calibration(_calibration_cv(tmp_path / "off", shift=3.0), repeats=2)
    o = off["overall"]
    assert off["folds"] == [0, 1] and o["ece"]["platt"] < 0.5 * o["ece"]["temperature"]
    assert o["nll"]["diff"] < 0 and o["brier"]["diff"] < 0
    centred = cal.cv_calibration(_calibration_cv(tmp_path / "centred", shift=0.0), repeats=2)["overall"]
    assert abs(centred["nll"]["diff"]) < 0.01  # nothing for the bias to fix: one extra parameter, no gain
    table = cal.markdown([off])
    assert table.splitlines()[2].startswith("| off | 2 | ")


def test_an_older_oof_file_has_its_temperature_undone(tmp_path: Path) -> None:
    """Fold 0 kept only probabilities at T = 2: the raw logit is 2 * logit(p), so the results match."""
    cal = _script("cv_calibration")
    new = cal.cv_calibration(_calibration_cv(tmp_path / "new", shift=3.0), repeats=1)
    old = cal.cv_calibration(_calibration_cv(tmp_path / "old", shift=3.0, legacy_t=2.0), repeats=1)
    for s in ("ece", "nll", "brier"):
        assert old["per_fold"][0]["platt"][s] == pytest.approx(new["per_fold"][0]["platt"][s], abs=1e-4)


def test_cv_calibration_missing_folder_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    cal = _script("cv_calibration")
    assert cal.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "no cross-validation summary" in err


# --- scripts/ship_model.py -------------------------------------------------------------------------
def test_ship_model_refuses_a_checkpoint_without_a_shap_background(
    tiny_checkpoint_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Shipping one without it silently dropped the background from the card, the CLI and the service."""
    monkeypatch.syspath_prepend(str(SCRIPTS))  # ship_model imports its sibling results_table
    ship = _script("ship_model")
    for name in ("SHIPPED", "FIGS", "REPO"):  # were the check gone, nothing of the real project is touched
        monkeypatch.setattr(ship, name, tmp_path / name)
    monkeypatch.setattr(sys, "argv", ["ship_model.py", str(tiny_checkpoint_path)])
    with pytest.raises(SystemExit, match="no SHAP background; add one first: python scripts/add_shap_background.py"):
        ship.main()
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_card_states_the_context_swap_and_leaves_it_out_when_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    ship = _script("ship_model")
    fam = {"marker": {"flip_rate": 0.01, "flips_to_pneumonia": 3, "flips_to_normal": 1,
                      "specificity": {"clean": 0.95, "probed": 0.94}}}
    kinds = {"normal_lungs": {"follow_rate": 0.5}, "pneumonia_lungs": {"follow_rate": 0.75}}
    audit = {"n_films": 10, "probes": {"families": fam}, "explanations": {"methods": {}},
             "context_swap": {"pairs": 4, "informative": 8, "followed": 5, "follow_rate": 0.625, "kinds": kinds}}
    text = ship.audit_section(audit, None)
    assert "the label follows the lungs' film on **62.5 %** of 8 informative composites" in text
    assert "(50.0 % with NORMAL lungs, 75.0 % with PNEUMONIA lungs)" in text
    for missing in (None, {"pairs": 0, "informative": 0, "followed": 0, "follow_rate": None, "kinds": {}}):
        assert "Context swap" not in ship.audit_section({**audit, "context_swap": missing}, None)


# --- scripts/attribution_profile.py ----------------------------------------------------------------
def test_band_shares_by_hand() -> None:
    """Map 1: all evidence in the top-left pixel; map 2: evenly spread; map 3: none positive (left out).
    Row band 1: (1 + 1/8) / 2; the other bands (0 + 1/8) / 2; columns alike."""
    import numpy as np

    prof = _script("attribution_profile")
    corner = np.zeros((16, 16))
    corner[0, 0] = 5.0
    maps = np.stack([corner, np.ones((16, 16)), -np.ones((16, 16))])
    rows, cols, used = prof.band_shares(maps)
    expected = np.array([(1 + 1 / 8) / 2] + [1 / 16] * 7)
    assert used == 2 and np.allclose(rows, expected) and np.allclose(cols, expected)
    assert rows.sum() == pytest.approx(1.0)
    assert prof.band_shares(-np.ones((1, 16, 16)))[2] == 0


# --- scripts/results_table.py ----------------------------------------------------------------------
def test_a_segment_that_trained_no_epoch_is_not_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run resumed only to be finished again (another calibration) logs no epoch."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.syspath_prepend(str(SCRIPTS))
    table = _script("results_table")
    for tags in (("epoch", "lr-AdamW"), ("hp_metric",)):
        w = SummaryWriter(str(tmp_path / "tb"), filename_suffix=f".{tags[0]}")
        for step in range(3):
            for tag in tags:
                w.add_scalar(tag, float(step), step)
        w.close()
    assert table.training_time_s(tmp_path)[1] == 1  # both files span time; only one trained


# --- scripts/context_swap_probe.py -----------------------------------------------------------------
def test_context_swap_probe_runs_end_to_end_and_refuses_zero_pairs(
    tiny_checkpoint_path: Path, synthetic_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    swap = _script("context_swap_probe")
    args = ["--checkpoint", str(tiny_checkpoint_path), "--data", str(synthetic_dataset), "--split", "val"]
    assert swap.main([*args, "--pairs", "2", "--gradcam"]) == 0
    out = capsys.readouterr().out
    assert "| NORMAL lungs, PNEUMONIA surroundings | 2 |" in out and "| PNEUMONIA lungs, NORMAL surroundings | 2 |" in out
    assert "Grad-CAM inside kept region" in out
    for bad, message in ((["--pairs", "0"], "--pairs: 0 must be >= 1"), (["--threads", "-1"], "--threads: -1 must be >= 1"),
                         (["--pairs", "x"], "--pairs: 'x' is not a whole number")):
        with pytest.raises(SystemExit) as exc:
            swap.main([*args, *bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and message in err


# --- scripts/markdown_output.py --------------------------------------------------------------------
def test_emit_prints_writes_and_turns_a_project_error_into_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pneumolens.errors import PneumoLensError

    emit = _script("markdown_output").emit
    out = tmp_path / "deep" / "table.md"
    assert emit(lambda: "| a |\n", out) == 0
    assert capsys.readouterr().out == "| a |\n" and out.read_text() == "| a |\n"

    def fails() -> str:
        raise PneumoLensError("runs/x: no folds")

    assert emit(fails, tmp_path / "never.md") == 2
    assert capsys.readouterr().err == "error: runs/x: no folds\n" and not (tmp_path / "never.md").exists()
