"""Figures are valid PNGs, the training log is read right, the Markdown report holds the numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pneumolens.errors import PneumoLensError
from pneumolens.metrics import binary_metrics, bootstrap_ci, subtype_recall
from pneumolens.report import (
    plot_confusion,
    plot_history,
    plot_pr,
    plot_reliability,
    plot_roc,
    read_history,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# What Lightning's CSVLogger writes: sparse rows, the LR monitor's rows without an epoch.
LIGHTNING_CSV = """\
epoch,lr-Adam,step,train_acc,train_loss_epoch,train_loss_step,val_auc,val_loss,val_acc
,0.001,0,,,,,,
0,,1,,,0.70,,,
0,,3,,,,0.60,0.65,0.55
0,,3,0.52,0.69,,,,
,0.0002,4,,,,,,
1,,5,,,0.50,,,
1,,7,,,,0.75,0.55,0.70
1,,7,0.66,0.58,,,,
"""


def _assert_png(path, min_size=(100, 100)):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    return y, p


def test_figures_are_valid_pngs(tmp_path, scores):
    y, p = scores
    c = binary_metrics(y, p, 0.5)["confusion"]
    paths = [
        plot_confusion(c, ("NORMAL", "PNEUMONIA"), tmp_path / "confusion.png"),
        plot_roc(y, p, tmp_path / "roc.png", threshold=0.5),
        plot_pr(y, p, tmp_path / "pr.png"),
        plot_reliability(y, p, tmp_path / "sub" / "reliability.png", n_bins=10),
    ]
    for path in paths:
        _assert_png(path)


def test_curves_with_one_class_still_give_a_figure(tmp_path):
    y, p = np.ones(5, dtype=int), np.linspace(0.1, 0.9, 5)
    _assert_png(plot_roc(y, p, tmp_path / "roc.png", threshold=0.5))
    _assert_png(plot_pr(y, p, tmp_path / "pr.png"))


def test_read_history_assigns_lr_rows_to_the_next_epoch(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(LIGHTNING_CSV)
    h = read_history(csv_path)
    assert h["lr-Adam"] == {0: 0.001, 1: 0.0002}
    assert h["train_loss_epoch"] == {0: 0.69, 1: 0.58}
    assert h["train_loss_step"] == {0: 0.70, 1: 0.50}  # last step value of each epoch
    assert h["val_auc"] == {0: 0.60, 1: 0.75}
    _assert_png(plot_history(csv_path, tmp_path / "history.png"))


def test_plot_history_tolerates_missing_columns(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,val_loss\n0,3,0.9\n1,7,0.7\n")
    _assert_png(plot_history(csv_path, tmp_path / "history.png"))


def test_plot_history_errors_name_the_file(tmp_path):
    with pytest.raises(PneumoLensError, match="missing.csv"):
        plot_history(tmp_path / "missing.csv", tmp_path / "h.png")
    odd = tmp_path / "odd.csv"
    odd.write_text("epoch,step,foo\n0,1,2\n")
    with pytest.raises(PneumoLensError, match="odd.csv.*foo"):
        plot_history(odd, tmp_path / "h.png")
    no_epoch = tmp_path / "noepoch.csv"
    no_epoch.write_text("a,b\n1,2\n")
    with pytest.raises(PneumoLensError, match="epoch"):
        plot_history(no_epoch, tmp_path / "h.png")


def test_write_report_holds_metrics_cis_confusion_subtypes_and_figures(tmp_path, scores):
    y, p = scores
    m = binary_metrics(y, p, 0.5)
    m["ci"] = bootstrap_ci(y, p, 0.5, n_boot=200)
    m["subtype_recall"] = subtype_recall(y, p, np.where(y == 1, "virus", "normal"), 0.5)
    m.update(split="validation", threshold_source="checkpoint", notes=["a note to read"])
    path = write_report(m, tmp_path, {"ROC curve": "roc.png"}, title="Test report")
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert text.startswith("# Test report")
    lo, hi = m["ci"]["roc_auc"]
    assert f"| ROC AUC | {m['roc_auc']:.3f} | {lo:.3f} – {hi:.3f} |" in text
    c = m["confusion"]
    assert f"| NORMAL | {c['tn']} (TN) | {c['fp']} (FP) |" in text
    assert f"| PNEUMONIA | {c['fn']} (FN) | {c['tp']} (TP) |" in text
    assert f"| virus | {int(y.sum())} | {m['subtype_recall']['virus']['recall']:.3f} | n/a |" in text
    assert "![ROC curve](roc.png)" in text
    assert "> a note to read" in text


@pytest.mark.slow  # real processes / whole pipelines: runs in `make test`, not in test-fast
def test_report_never_touches_pyplot_or_the_global_backend(tmp_path):
    # pyplot would pick (and lock) a global backend; Figure objects need none.
    code = (
        "import sys, numpy as np, pneumolens.report as r; "
        f"r.plot_pr(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4]), {str(tmp_path / 'pr.png')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    _assert_png(tmp_path / "pr.png")


def test_wilson_interval_by_hand() -> None:
    from pneumolens.report import wilson_interval

    lo, hi = wilson_interval(np.array([0, 3, 0]), np.array([3, 3, 0]))
    z2 = 1.96**2
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and hi[0] == pytest.approx(z2 / (3 + z2))  # 0 of 3: 0 to 0.56
    assert lo[1] == pytest.approx(3 / (3 + z2)) and hi[1] == pytest.approx(1.0)  # 3 of 3: 0.44 to 1
    assert np.isnan(lo[2]) and np.isnan(hi[2])  # an empty bin has no interval
    # float rounding put 0 of 11 just above 0 and 7 of 7 just under 1: negative error bars, a crash
    lo, hi = wilson_interval(np.array([0, 7, 5]), np.array([11, 7, 5]))
    assert lo[0] == 0.0 and hi[1] == 1.0 and hi[2] == 1.0


def test_reliability_of_bins_all_negative_or_all_positive_draws(tmp_path) -> None:
    p = np.array([0.02] * 11 + [0.98] * 7)
    y = np.array([0] * 11 + [1] * 7)
    _assert_png(plot_reliability(y, p, tmp_path / "r.png"))


def test_reliability_writes_counts_fades_few_image_bins_and_keeps_the_legend_off_the_bars() -> None:
    from pneumolens.report import FEW_IN_BIN, reliability_figure

    # 4 bins of width 0.25: 12 images at 0.1 (3 positive), 3 at 0.6 (all positive), none at 0.25-0.5, 20 at 0.9
    p = np.array([0.1] * 12 + [0.6] * 3 + [0.9] * 20)
    y = np.array([1] * 3 + [0] * 9 + [1] * 3 + [1] * 18 + [0] * 2)
    fig = reliability_figure(y, p, n_bins=4)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["12", "20", "3"]  # the count over every non-empty bin
    bars = [r for r in ax.patches if r.get_height() > 0]
    heights = {round(r.get_x(), 2): (round(r.get_height(), 3), r.get_alpha(), r.get_hatch()) for r in bars}
    assert heights[0.0] == (0.25, 0.8, None) and heights[0.75] == (0.9, 0.8, None)  # 3/12 and 18/20: solid
    assert heights[0.5][0] == 1.0 and heights[0.5][1] < 0.5 and heights[0.5][2]  # 3 of 3: faint and hatched
    assert 3 < FEW_IN_BIN <= 12
    (legend,) = fig.legends
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())  # the legend covers nothing


def test_history_marks_the_best_epoch_by_validation_loss(tmp_path) -> None:
    from pneumolens.report import best_epoch, history_figure

    assert best_epoch({"val_loss": {0: 0.5, 1: 0.4, 2: 0.4, 3: 0.45}}) == 1  # the first of a tie, as Lightning keeps it
    assert best_epoch({"train_loss": {0: 0.5}}) is None
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(LIGHTNING_CSV)  # val_loss 0.65 then 0.55: epoch 1
    fig = history_figure(csv_path)
    for ax in fig.axes:
        assert any(list(line.get_xdata()) == [1, 1] for line in ax.get_lines()), ax.get_title()
    assert "kept epoch 1 (lowest validation loss)" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(list(line.get_xdata()) == [0, 0] for line in history_figure(csv_path, best=0).axes[0].get_lines())
    # a run that keeps its last epoch says so, and marks that epoch, not the lowest loss
    last = history_figure(csv_path, best=1, why="last epoch")
    assert "kept epoch 1 (last epoch)" in [t.get_text() for t in last.legends[0].get_texts()]
