"""The pictures of a labelling round: picked images with the current prediction, the pool in a
2-D projection of its embedding, and the learning curve.

Every function takes plain arrays and returns a :class:`matplotlib.figure.Figure` drawn on
matplotlib's Agg canvas (no pyplot, no display, no global backend change), so a test can inspect
the artists and a caller can write the PNG with :func:`save_figure` (atomic) or embed
:func:`figure_png_bytes` in a page. Artists that tests and readers look for carry a ``gid``:
``"unlabelled"``, ``"labelled"``, ``"picked"`` (pool scatter), ``"curve:<name>"`` and
``"band:<name>"`` (learning curve), ``"image"`` and ``"prediction:<class>"`` (overlays).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from alframe._atomic import atomic_write_bytes
from alframe._rows import is_on_disk

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PCA_FIT_ROWS = 20_000
"""At most this many (evenly spaced) rows fit the principal axes; every row is projected."""

MAX_OVERLAYS = 16
"""Picked images shown in one overlay figure (the first ones in pick order)."""

_UNLABELLED_COLOUR = "#a8a8a8"
_LABELLED_COLOUR = "#1f77b4"
_PICKED_COLOUR = "#d62728"
_CLASS_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#17becf", "#e377c2", "#bcbd22")


def _new_figure(
    width: float,
    height: float,
    dpi: int = 100,
    layout: Literal["constrained", "tight"] | None = None,
) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def figure_png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write the figure as a PNG, atomically (parent folders are created).

    Returns:
        The written path.
    """
    return atomic_write_bytes(path, figure_png_bytes(figure))


# ------------------------------------------------------------------------------ projection
def pca_2d(
    embeddings: np.ndarray, max_fit_rows: int = PCA_FIT_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Project embeddings onto their first two principal axes (PCA through NumPy's SVD).

    Deterministic: no random numbers, and each axis is oriented so that its largest-magnitude
    loading is positive (SVD leaves the sign open). Pools larger than ``max_fit_rows`` fit the
    axes on evenly spaced rows (still deterministic); every row is projected.

    An :class:`alframe._rows.OnDiskRows` store (``embed.memory_map``, pools larger than RAM) is
    read in row chunks: the mean in one pass, the axes fitted on the same at most
    ``max_fit_rows`` evenly spaced rows (gathered from the file), the projection in a second
    pass; only the (N, 2) coordinates and one chunk are in memory at a time.

    Args:
        embeddings: (N, D) embeddings (unit rows in alframe, but any real matrix works), in RAM
            or a store.
        max_fit_rows: most rows used to fit the axes.

    Returns:
        ``(coordinates, explained)``: (N, 2) float64 coordinates of the centred rows on the two
        axes (zeros where the data has fewer than two directions of variance), and (2,) the
        fraction of the fitted rows' variance each axis explains.

    Raises:
        ValueError: ``embeddings`` is not two-dimensional.
    """
    on_disk = is_on_disk(embeddings)
    data: Any = embeddings if on_disk else np.asarray(embeddings)
    if data.ndim != 2:
        raise ValueError(f"embeddings must be (N, D); got shape {data.shape}")
    n_rows = data.shape[0]
    coordinates = np.zeros((n_rows, 2), dtype=np.float64)
    explained = np.zeros(2, dtype=np.float64)
    if n_rows == 0 or data.shape[1] == 0:
        return coordinates, explained
    if on_disk:
        total_rows = np.zeros(data.shape[1], dtype=np.float64)
        for _, block in data.chunks():
            total_rows += block.sum(axis=0, dtype=np.float64)
        mean = total_rows / n_rows
    else:
        mean = data.mean(axis=0, dtype=np.float64)
    if n_rows > max_fit_rows:
        rows = np.unique(np.linspace(0, n_rows - 1, max_fit_rows).round().astype(np.int64))
        fit = data[rows].astype(np.float64) - mean
    else:
        fit = data[:].astype(np.float64) - mean
    _, singular, axes_t = np.linalg.svd(fit, full_matrices=False)
    k = min(2, axes_t.shape[0])
    axes = axes_t[:k]
    strongest = np.argmax(np.abs(axes), axis=1)
    signs = np.sign(axes[np.arange(k), strongest])
    signs[signs == 0] = 1.0
    axes = axes * signs[:, None]
    for start in range(0, n_rows, 8192):  # bounded float64 temporaries for large pools
        chunk = data[start : start + 8192].astype(np.float64) - mean
        coordinates[start : start + 8192, :k] = chunk @ axes.T
    total = float((singular**2).sum())
    if total > 0:
        explained[:k] = singular[:k] ** 2 / total
    return coordinates, explained


def pool_projection_figure(
    embeddings: np.ndarray,
    labelled: np.ndarray,
    picked: Sequence[int] | np.ndarray,
    title: str = "",
    labelled_name: str = "labelled",
    picked_name: str = "picked",
) -> Figure:
    """The pool in the plane of its first two principal axes, with labelled and picked items
    marked.

    Three scatter collections are always drawn (possibly empty), with gids ``"unlabelled"``
    (grey dots), ``"labelled"`` (blue squares) and ``"picked"`` (red stars, on top); an item
    both labelled and picked counts as picked.

    Args:
        embeddings: (N, D) pool embeddings.
        labelled: (N,) bool, items labelled (or selected) before this pick.
        picked: indices into the pool of the items picked now.
        title: figure title.
        labelled_name: legend name of the labelled items (e.g. ``"earlier rounds"``).
        picked_name: legend name of the picked items (e.g. ``"picked in round 3"``).

    Returns:
        The figure.
    """
    coordinates, explained = pca_2d(embeddings)
    n_items = coordinates.shape[0]
    labelled_mask = np.asarray(labelled, dtype=bool).reshape(-1)
    if labelled_mask.shape[0] != n_items:
        raise ValueError(f"labelled has {labelled_mask.shape[0]} entries for {n_items} items")
    picked_mask = np.zeros(n_items, dtype=bool)
    picked_mask[np.asarray(picked, dtype=np.int64)] = True
    earlier = labelled_mask & ~picked_mask
    rest = ~labelled_mask & ~picked_mask
    figure = _new_figure(6.4, 5.2)
    axis = figure.add_subplot()
    dot = float(np.clip(3000.0 / max(n_items, 1), 3.0, 30.0))
    groups = (
        ("unlabelled", rest, "unlabelled", _UNLABELLED_COLOUR, "o", dot, 1),
        ("labelled", earlier, labelled_name, _LABELLED_COLOUR, "s", max(dot * 1.5, 14.0), 2),
        ("picked", picked_mask, picked_name, _PICKED_COLOUR, "*", max(dot * 5.0, 90.0), 3),
    )
    for gid, mask, name, colour, marker, size, order in groups:
        axis.scatter(
            coordinates[mask, 0],
            coordinates[mask, 1],
            s=size,
            c=colour,
            marker=marker,
            edgecolors="black" if gid == "picked" else "none",
            linewidths=0.5,
            zorder=order,
            label=f"{name} ({int(mask.sum())})",
            gid=gid,
        )
    axis.set_xlabel(f"principal axis 1 ({100 * explained[0]:.0f} % of variance)")
    axis.set_ylabel(f"principal axis 2 ({100 * explained[1]:.0f} % of variance)")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    axis.set_title(title or f"pool of {n_items} items (PCA of the embedding)", fontsize="medium")
    figure.tight_layout()
    return figure


# -------------------------------------------------------------------------------- overlays
def _display_scale(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) scaled to [0, 1] between its 1st and 99th percentiles."""
    values = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(values, [1.0, 99.0]) if values.size else (0.0, 1.0)
    if not high > low:
        low, high = float(values.min(initial=0.0)), float(values.max(initial=1.0))
    if not high > low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def picked_overlay_figure(
    images: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray] | None,
    captions: Sequence[str],
    class_names: Sequence[str],
    title: str,
    max_images: int = MAX_OVERLAYS,
    total: int | None = None,
) -> Figure:
    """Picked images in grey with the model's prediction as a translucent colour and a contour
    per foreground class.

    Args:
        images: per item, (H, W) or (H, W, 3) intensities (any range; scaled for display).
        predictions: per item, (H, W) integer class-index maps of the same size as its image, or
            None when there is no model yet (the images are shown alone and the title says so).
        captions: per item, a short caption (e.g. rank and id).
        class_names: class names in index order (background first; not drawn).
        title: figure title.
        max_images: show at most this many (the first ones); the title says how many of how many.
        total: how many items were picked when only the first ones are passed (default: as
            many as ``images``).

    Returns:
        The figure; each shown image is an ``AxesImage`` with gid ``"image"`` and each class
        present in a prediction one with gid ``"prediction:<class name>"``.
    """
    from matplotlib.patches import Patch

    if predictions is not None and len(predictions) != len(images):
        raise ValueError(f"{len(predictions)} predictions for {len(images)} images")
    shown = min(len(images), max_images)
    columns = max(1, min(shown, 4))
    rows = max(1, math.ceil(shown / columns))
    # Constrained layout keeps captions, title and legend clear of the images.
    figure = _new_figure(2.4 * columns + 0.4, 2.5 * rows + 0.9, layout="constrained")
    picked = max(len(images), total or 0)
    heading = title
    if shown < picked:
        heading += f" (first {shown} of {picked})"
    heading += "\nno model yet: images only" if predictions is None else "\nmodel prediction"
    figure.suptitle(heading, fontsize="medium")
    if shown == 0:
        axis = figure.add_subplot()
        axis.axis("off")
        axis.text(0.5, 0.5, "nothing picked", ha="center", va="center")
        return figure
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    present: set[int] = set()
    for k, axis in enumerate(axes):
        axis.axis("off")
        if k >= shown:
            continue
        scaled = _display_scale(images[k])
        axis.imshow(scaled, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", gid="image")
        axis.set_title(captions[k] if k < len(captions) else "", fontsize="x-small")
        if predictions is None:
            continue
        labels = np.asarray(predictions[k])
        if labels.shape != scaled.shape[:2]:
            raise ValueError(
                f"prediction {k} is {labels.shape} but its image is {scaled.shape[:2]}"
            )
        for class_index in range(1, len(class_names)):
            region = labels == class_index
            if not region.any():
                continue
            present.add(class_index)
            colour = _CLASS_COLOURS[(class_index - 1) % len(_CLASS_COLOURS)]
            rgba = np.zeros((*region.shape, 4), dtype=np.float64)
            rgba[region] = (*_rgb(colour), 0.35)
            axis.imshow(rgba, interpolation="nearest", gid=f"prediction:{class_names[class_index]}")
            if min(region.shape) >= 2:
                axis.contour(region.astype(np.float64), levels=[0.5], colors=[colour], linewidths=1)
    if predictions is not None:
        handles: list[Any] = [
            Patch(
                facecolor=_CLASS_COLOURS[(i - 1) % len(_CLASS_COLOURS)],
                alpha=0.6,
                label=class_names[i],
            )
            for i in range(1, len(class_names))
        ]
        if handles:
            figure.legend(
                handles=handles,
                loc="outside lower center",
                ncols=min(len(handles), 4),
                fontsize="small",
                frameon=False,
            )
        if not present:
            figure.suptitle(heading + " (background everywhere)", fontsize="medium")
    return figure


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    red, green, blue = to_rgb(colour)
    return float(red), float(green), float(blue)


# -------------------------------------------------------------------------- learning curve
@dataclass(frozen=True)
class CurveSeries:
    """One learning curve: a score at each labelled-set size, repeated values being seeds (or
    repeated trainings) of the same size.

    Attributes:
        name: legend name (e.g. the evaluation set).
        n_labelled: (R,) labelled-set sizes, one per run.
        scores: (R,) the score of each run (NaN entries are left out).
    """

    name: str
    n_labelled: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class CurvePoints:
    """A :class:`CurveSeries` reduced to one point per labelled-set size.

    Attributes:
        n_labelled: (P,) distinct sizes, ascending.
        mean: (P,) mean score per size.
        std: (P,) sample standard deviation per size (ddof=1; 0 for one run).
        count: (P,) runs per size.
    """

    n_labelled: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def curve_points(series: CurveSeries) -> CurvePoints:
    """Mean, standard deviation and count over the runs at each labelled-set size."""
    x = np.asarray(series.n_labelled, dtype=np.float64).reshape(-1)
    y = np.asarray(series.scores, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"{series.name}: {x.size} sizes for {y.size} scores")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    sizes = np.unique(x)
    mean = np.array([y[x == s].mean() for s in sizes], dtype=np.float64)
    std = np.array(
        [y[x == s].std(ddof=1) if (x == s).sum() > 1 else 0.0 for s in sizes], dtype=np.float64
    )
    count = np.array([(x == s).sum() for s in sizes], dtype=np.int64)
    return CurvePoints(sizes, mean, std, count)


def _repeats_text(count: np.ndarray) -> str:
    low, high = int(count.min()), int(count.max())
    return f"{low}" if low == high else f"{low}–{high}"


def learning_curve_figure(
    series: Sequence[CurveSeries],
    title: str = "",
    ylabel: str = "Dice",
    repeat_name: str = "seeds",
) -> Figure:
    """Score against labelled images, one line per series, with a mean ± std band where a size
    has several runs.

    Each series draws a line of its means (gid ``"curve:<name>"``); when any size has more than
    one run it also draws the band mean ± std (gid ``"band:<name>"``) and the single runs as
    small dots. Its legend entry is the line drawn over the band (the same artists as in the
    plot) and says what the band is.

    Args:
        series: the curves.
        title: figure title.
        ylabel: name of the score.
        repeat_name: what repeated runs at one size are (``"seeds"``, ``"trainings"``).

    Returns:
        The figure.
    """

    figure = _new_figure(6.4, 4.4)
    axis = figure.add_subplot()
    handles: list[Any] = []
    labels: list[str] = []
    sizes: set[int] = set()
    for entry in series:
        points = curve_points(entry)
        if points.n_labelled.size == 0:
            continue
        sizes.update(int(n) for n in points.n_labelled)
        (line,) = axis.plot(
            points.n_labelled, points.mean, marker="o", gid=f"curve:{entry.name}", zorder=3
        )
        colour = line.get_color()
        if (points.count > 1).any():
            band = axis.fill_between(
                points.n_labelled,
                points.mean - points.std,
                points.mean + points.std,
                color=colour,
                alpha=0.2,
                linewidth=0,
                gid=f"band:{entry.name}",
            )
            x = np.asarray(entry.n_labelled, dtype=np.float64)
            y = np.asarray(entry.scores, dtype=np.float64)
            axis.scatter(x, y, s=10, color=colour, alpha=0.6, zorder=2, gid=f"runs:{entry.name}")
            handles.append((band, line))
            labels.append(
                f"{entry.name} (mean ± std over {_repeats_text(points.count)} {repeat_name})"
            )
        else:
            handles.append(line)
            counts = "1 seed" if repeat_name == "seeds" else "one run per labelled count"
            labels.append(f"{entry.name} ({counts})")
    if not handles:
        axis.text(
            0.5, 0.5, "no trained rounds yet", ha="center", va="center", transform=axis.transAxes
        )
    else:
        from alframe.loop.summary import band_legend

        band_legend(axis, handles, labels)
    if 0 < len(sizes) <= 12:
        axis.set_xticks(sorted(sizes))
    axis.set_xlabel("labelled images")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if title:
        axis.set_title(title, fontsize="medium")
    figure.tight_layout()
    return figure
