"""A static, self-contained HTML page: sections of text, tables and PNG pictures.

Pictures are embedded as ``data:image/png;base64`` URIs, so the single file opens from disk
(``file://``) in any browser, without a server and without the folder it was written in. A few
lines of script only record, once the page has loaded, how many pictures decoded
(``<body data-images-loaded="k/n">``) for automated checks; the page reads the same without it.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
p.meta { color: #666; margin-top: 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
"""

_LOAD_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", decoded.length + "/" + images.length);
});
"""


def _inline(text: str) -> str:
    """Escaped text, with spans in backticks (`round next`) as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def png_data_uri(png: bytes) -> str:
    """A ``data:`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; every cell is escaped text (None shows as empty).

    Args:
        header: column names.
        rows: rows of cells, each as long as ``header``.

    Returns:
        The ``<table>`` element.
    """
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in header)
    body = "\n".join(
        "<tr>"
        + "".join(f"<td>{'' if c is None else html.escape(str(c))}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


@dataclass(frozen=True)
class ReportSection:
    """One section of a report page.

    Attributes:
        heading: the section heading (plain text).
        paragraphs: plain-text paragraphs (escaped when rendered; `backticks` mark code).
        picture_png: an optional PNG shown below the text.
        picture_caption: the picture's caption and alt text.
        tables_html: trusted HTML tables (from :func:`html_table`) shown after the picture.
    """

    heading: str
    paragraphs: tuple[str, ...] = ()
    picture_png: bytes | None = None
    picture_caption: str = ""
    tables_html: tuple[str, ...] = ()


def render_report(title: str, sections: Sequence[ReportSection], meta: str = "") -> str:
    """The whole page.

    Args:
        title: page title and top heading.
        sections: the sections, in order.
        meta: a line under the title (e.g. where and when it was written).

    Returns:
        The HTML document.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta:
        parts.append(f'<p class="meta">{html.escape(meta)}</p>')
    for section in sections:
        parts.append(f"<section>\n<h2>{html.escape(section.heading)}</h2>")
        parts.extend(f"<p>{_inline(text)}</p>" for text in section.paragraphs)
        if section.picture_png is not None:
            alt = html.escape((section.picture_caption or section.heading).replace("`", ""))
            parts.append(
                f'<figure><img src="{png_data_uri(section.picture_png)}" alt="{alt}">'
                f"<figcaption>{_inline(section.picture_caption)}</figcaption></figure>"
            )
        parts.extend(section.tables_html)
        parts.append("</section>")
    parts += [f"<script>{_LOAD_CHECK}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)
