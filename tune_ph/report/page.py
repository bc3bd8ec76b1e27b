"""HTML building blocks of report.html: cell formatting, escaped tables, inline images, the style sheet."""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;line-height:1.45;max-width:1360px;
margin:0 auto;padding:1rem 1.5rem 3rem}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
nav{font-size:.9rem;margin:.4rem 0 1rem} nav a{margin-right:1rem}
.lead{font-size:1.1rem} code{background:#f3f3f3;padding:0 .25rem;border-radius:3px}
.scroll{overflow-x:auto;max-width:100%;border:1px solid #ddd;border-radius:4px}
table{border-collapse:collapse;font-size:.88rem}
th,td{padding:.25rem .5rem;border-bottom:1px solid #e6e6e6;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f6f6f6;white-space:normal;min-width:3.5em;vertical-align:bottom}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:14em;max-width:30em;overflow-wrap:anywhere}
tr.winner td{background:#fdecea;font-weight:600} .asha{color:#666} .error{color:#a0302a}
.cards{display:flex;flex-wrap:wrap;gap:1.5rem 2.5rem;align-items:flex-start}
.cards>div{flex:0 0 auto;max-width:100%} .cards>div.wide{flex:1 1 460px} .cards h3{margin:.2rem 0 .4rem;font-size:1rem}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.45rem .8rem;margin:.6rem 0}
.muted{color:#666;font-size:.9rem} img{max-width:100%;height:auto} img.residuals{max-width:760px}
"""


def fmt(value: Any) -> str:
    """A cell's text: floats to 4 significant digits, missing values as an empty string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def table_html(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """An HTML table of already-formatted text (escaped here); numeric-looking cells right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for cell in row:
            cls = "num" if _looks_numeric(cell) else ("wrap" if len(cell) > 40 else "")
            cells.append(f'<td class="{cls}">{html.escape(cell)}</td>' if cls else f"<td>{html.escape(cell)}</td>")
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def img(png: bytes, alt: str, css: str = "") -> str:
    """An inline <img> (base64 PNG), so report.html needs no other file."""
    data = base64.b64encode(png).decode()
    cls = f' class="{html.escape(css)}"' if css else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
