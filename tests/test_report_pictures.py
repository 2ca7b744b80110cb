"""The pictures (pool projection, picked overlays, learning curves) and the static HTML page, on
plain arrays: artists inspected in the matplotlib figures, PNGs decoded."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from PIL import Image

from alframe.loop.summary import learning_curves_figure, results_frame, summary_table
from alframe.report import (
    CurveSeries,
    ReportSection,
    figure_png_bytes,
    html_table,
    learning_curve_figure,
    pca_2d,
    picked_overlay_figure,
    pool_projection_figure,
    render_report,
    save_figure,
)


def _unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    rows[:, 0] *= 4.0  # a clear first axis
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _by_gid(figure: Any, kind: type) -> dict[str, Any]:
    return {a.get_gid(): a for a in figure.findobj(kind) if a.get_gid()}


# ------------------------------------------------------------------------------ projection
def test_pca_matches_a_direct_svd_and_is_deterministic() -> None:
    embeddings = _unit_rows(60, 16)
    coordinates, explained = pca_2d(embeddings)
    centred = embeddings.astype(np.float64) - embeddings.astype(np.float64).mean(axis=0)
    _, singular, axes_t = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ axes_t[:2].T
    assert coordinates.shape == (60, 2)
    for k in range(2):  # SVD leaves each axis's sign open
        sign = np.sign(coordinates[:, k] @ reference[:, k])
        np.testing.assert_allclose(coordinates[:, k], sign * reference[:, k], atol=1e-9)
        # the orientation rule: the axis's largest-magnitude loading is positive
        loading = axes_t[k] * sign
        assert loading[np.argmax(np.abs(loading))] > 0
    np.testing.assert_allclose(explained, singular[:2] ** 2 / (singular**2).sum())
    again, _ = pca_2d(embeddings.copy())
    np.testing.assert_array_equal(coordinates, again)
    # flipping the data's sign does not flip the picture: the orientation is fixed by the data
    flipped, _ = pca_2d(-embeddings)
    np.testing.assert_allclose(np.abs(flipped), np.abs(coordinates), atol=1e-9)


def test_pca_small_and_degenerate_pools() -> None:
    assert pca_2d(np.zeros((0, 8), np.float32))[0].shape == (0, 2)
    one, explained = pca_2d(np.ones((1, 8), np.float32))
    np.testing.assert_array_equal(one, np.zeros((1, 2)))
    assert explained.tolist() == [0.0, 0.0]
    line, _ = pca_2d(np.array([[0.0], [1.0], [2.0]]))  # one dimension: the second axis is 0
    np.testing.assert_allclose(line[:, 1], 0.0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        pca_2d(np.zeros(5))


def test_pca_of_a_large_pool_fits_on_evenly_spaced_rows() -> None:
    embeddings = _unit_rows(500, 8, seed=1)
    full, _ = pca_2d(embeddings)
    sampled, _ = pca_2d(embeddings, max_fit_rows=250)
    assert sampled.shape == (500, 2)
    # half the rows give nearly the same axes on this isotropic-but-one data
    assert abs(np.corrcoef(full[:, 0], sampled[:, 0])[0, 1]) > 0.99


def test_pool_projection_marks_unlabelled_labelled_and_picked(tmp_path: Path) -> None:
    embeddings = _unit_rows(40, 12)
    labelled = np.zeros(40, dtype=bool)
    labelled[[0, 1, 2, 3, 4]] = True
    picked = [10, 11, 12, 4]  # item 4 was labelled and is picked: it counts as picked
    figure = pool_projection_figure(
        embeddings, labelled, picked, labelled_name="earlier rounds", picked_name="round 2"
    )
    groups = _by_gid(figure, PathCollection)
    counts = {gid: len(groups[gid].get_offsets()) for gid in ("unlabelled", "labelled", "picked")}
    assert counts == {"unlabelled": 32, "labelled": 4, "picked": 4}
    coordinates, _ = pca_2d(embeddings)
    np.testing.assert_allclose(
        np.asarray(groups["picked"].get_offsets()), coordinates[np.sort(picked)]
    )
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "unlabelled (32)",
        "earlier rounds (4)",
        "round 2 (4)",
    ]
    path = save_figure(figure, tmp_path / "deep" / "pool.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 520)
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="entries"):
        pool_projection_figure(embeddings, labelled[:5], picked)


# -------------------------------------------------------------------------------- overlays
def test_picked_overlay_draws_each_class_present() -> None:
    images = [np.random.default_rng(k).random((24, 20)) for k in range(3)]
    predictions = [np.zeros((24, 20), np.uint8) for _ in range(3)]
    predictions[0][5:10, 5:10] = 1
    predictions[1][2:6, 2:6] = 2
    predictions[1][10:12, 10:12] = 1
    figure = picked_overlay_figure(
        images, predictions, ["a", "b", "c"], ["background", "lung", "heart"], "round 2"
    )
    drawn = [a.get_gid() for a in figure.findobj(AxesImage)]
    assert drawn.count("image") == 3
    assert sorted(g for g in drawn if g != "image") == [
        "prediction:heart",
        "prediction:lung",
        "prediction:lung",
    ]
    assert "model prediction" in figure.get_suptitle()
    with Image.open(io.BytesIO(figure_png_bytes(figure))) as image:
        assert image.format == "PNG"
    with pytest.raises(ValueError, match="predictions for"):
        picked_overlay_figure(images, predictions[:1], [], ["b", "f"], "x")


def test_picked_overlay_without_a_model_and_beyond_the_limit() -> None:
    images = [np.full((8, 8), float(k)) for k in range(5)]
    figure = picked_overlay_figure(
        images, None, list("abcde"), ["background", "fg"], "round 1", max_images=4
    )
    drawn = [a.get_gid() for a in figure.findobj(AxesImage)]
    assert drawn == ["image"] * 4
    title = figure.get_suptitle()
    assert "no model yet: images only" in title and "(first 4 of 5)" in title
    rgb = picked_overlay_figure([np.zeros((6, 6, 3))], None, ["x"], ["b", "f"], "t", total=9)
    assert "(first 1 of 9)" in rgb.get_suptitle()
    empty = picked_overlay_figure([], None, [], ["b", "f"], "round 9")
    assert any(t.get_text() == "nothing picked" for t in empty.findobj(match=_is_text))


def _is_text(artist: Any) -> bool:
    from matplotlib.text import Text

    return isinstance(artist, Text)


# -------------------------------------------------------------------------- learning curve
def test_project_learning_curve_bands_only_where_runs_repeat() -> None:
    repeated = CurveSeries(
        "test",
        np.array([4, 4, 4, 8, 8, 12], dtype=float),
        np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95]),
    )
    single = CurveSeries("val", np.array([4.0, 8.0]), np.array([0.4, np.nan]))
    figure = learning_curve_figure([repeated, single], repeat_name="trainings")
    lines = _by_gid(figure, Line2D)
    np.testing.assert_allclose(lines["curve:test"].get_ydata(), [0.6, 0.85, 0.95])
    np.testing.assert_allclose(lines["curve:val"].get_xdata(), [4.0])  # NaN left out
    bands = _by_gid(figure, PolyCollection)
    assert set(bands) == {"band:test"}
    vertices = bands["band:test"].get_paths()[0].vertices
    spread = np.std([0.8, 0.9], ddof=1)
    for x, y in [(4, 0.7), (4, 0.5), (8, 0.85 + spread), (8, 0.85 - spread), (12, 0.95)]:
        assert np.isclose(vertices, [x, y]).all(axis=1).any(), (x, y)
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "test (mean ± std over 1–3 trainings)",
        "val (one run per labelled count)",
    ]
    # Each legend entry is drawn with its curve's line (colour, style, marker).
    legend_lines = [
        (h.get_color(), h.get_linestyle(), h.get_marker()) for h in legend.findobj(Line2D)
    ]
    plotted = [(lines[g].get_color(), "-", "o") for g in ("curve:test", "curve:val")]
    assert legend_lines == plotted
    empty = learning_curve_figure([])
    assert any(t.get_text() == "no trained rounds yet" for t in empty.findobj(match=_is_text))


def _manifest(label: str, seed: int, n: int, dice: float) -> dict[str, Any]:
    return {
        "label": label,
        "strategy": label,
        "schedule": "full" if label == "full" else "s",
        "seed": seed,
        "round": n,
        "n_labelled": n,
        "metrics": {"test": {"n": 5.0, "dice_mean": dice, "dice_std": 0.1, "iou_mean": dice}},
        "fit": {},
    }


def test_experiment_learning_curve_has_seed_bands_and_a_legend_that_matches_the_lines() -> None:
    manifests = [
        *[_manifest("xssr", s, n, d) for s, (n, d) in enumerate([(10, 0.6), (10, 0.7), (10, 0.8)])],
        *[_manifest("xssr", s, 20, d) for s, d in enumerate([0.85, 0.9, 0.95])],
        _manifest("random", 0, 10, 0.5),
        _manifest("random", 0, 20, 0.75),
        _manifest("full", 0, 100, 0.95),
        _manifest("full", 1, 100, 0.97),
    ]
    table = summary_table(results_frame(manifests))
    figure = learning_curves_figure(table, title="t")
    axis = figure.axes[0]
    lines = _by_gid(figure, Line2D)
    bands = _by_gid(figure, PolyCollection)
    # xssr has three seeds: a band of mean ± std (0.1 at 10, 0.05 at 20); random has one: none.
    assert "band:xssr" in bands and "band:random" not in bands
    y = bands["band:xssr"].get_paths()[0].vertices[:, 1]
    assert y.min() == pytest.approx(0.7 - 0.1) and y.max() == pytest.approx(0.9 + 0.05)
    np.testing.assert_allclose(lines["curve:xssr"].get_ydata(), [0.7, 0.9])
    reference = lines["reference"]
    assert reference.get_linestyle() == "--" and reference.get_ydata()[0] == pytest.approx(0.96)
    assert axis.findobj(lambda a: a.get_gid() == "reference_band")
    legend = axis.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "random (1 seed)",
        "xssr (mean ± std over 3 seeds)",
        "full data (n=100, mean ± std over 2 seeds)",
    ]
    # The legend shows the lines that are plotted: same colour, style and marker, in order
    # (the full-data entry is the dashed black line, not only its grey band).
    legend_lines = [
        (h.get_color(), h.get_linestyle(), h.get_marker()) for h in legend.findobj(Line2D)
    ]
    plotted = [
        (lines["curve:random"].get_color(), "-", "o"),
        (lines["curve:xssr"].get_color(), "-", "o"),
        ("black", "--", "None"),
    ]
    assert legend_lines == plotted


# ---------------------------------------------------------------------------------- html
def test_report_page_embeds_pictures_and_escapes_text() -> None:
    png = figure_png_bytes(learning_curve_figure([]))
    page = render_report(
        "Project <x>",
        [
            ReportSection(
                "Curve & pool",
                ("Run `alframe round next DIR` <now>.",),
                picture_png=png,
                picture_caption="a `round train` picture",
                tables_html=(html_table(["a", "b"], [[1, None], ["<b>", 2.5]]),),
            ),
            ReportSection("Empty"),
        ],
        meta="written today",
    )
    assert page.startswith("<!DOCTYPE html>") and "<title>Project &lt;x&gt;</title>" in page
    assert "<code>alframe round next DIR</code> &lt;now&gt;." in page
    assert page.count("data:image/png;base64,") == 1
    assert "<td>&lt;b&gt;</td><td>2.5</td>" in page and "<td>1</td><td></td>" in page
    assert 'alt="a round train picture"' in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
