"""Pictures and static HTML reports: what was picked, where it sits in the pool, how the model
improves round by round.

:mod:`alframe.report.pictures` draws with matplotlib's Agg canvas on plain NumPy arrays (no
pyplot, no display, no alframe imports beyond NumPy and matplotlib), so every other package may
use it; :mod:`alframe.report.html` assembles a self-contained page (images as data URIs) that a
browser opens from disk without a server.
"""

from alframe.report.html import ReportSection, html_table, png_data_uri, render_report
from alframe.report.pictures import (
    CurveSeries,
    figure_png_bytes,
    learning_curve_figure,
    pca_2d,
    picked_overlay_figure,
    pool_projection_figure,
    save_figure,
)

__all__ = [
    "CurveSeries",
    "ReportSection",
    "figure_png_bytes",
    "html_table",
    "learning_curve_figure",
    "pca_2d",
    "picked_overlay_figure",
    "png_data_uri",
    "pool_projection_figure",
    "render_report",
    "save_figure",
]
