"""How the report writes values and HTML: each metric's precision, escaping, verdict tags, plain tables."""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd


def format_value(column: str, value: object) -> str:
    """A cell as the table shows it: each metric with the precision that means something for it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    v = float(value)
    if column.endswith("_at"):
        return datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if column.startswith("flip_rate") and column != "flip_rate_vs_full_mc":
        return f"{100 * v:.1f}%"
    if isinstance(value, (int, np.integer)) or (v.is_integer() and column in ("trials", "seed", "n_test")):
        return f"{int(v):,}"
    if "accuracy" in column or column in ("efficiency", "ece", "brier", "nll", "temperature", "p_value"):
        return f"{v:.3f}"
    if column.endswith("_mb") or (column.endswith("_per_s") and abs(v) >= 100):
        return f"{v:,.0f}"
    if "nfe" in column:
        return f"{v:,.4g}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def json_value(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    return value if isinstance(value, (int, float, str)) else str(value)


#: What JSON inside a <script> element must not hold as it is: markup (``</script>``, ``<!--``) and the two line
#: separators older script parsers end a line at. Each is written as a JSON escape, which reads back the same.
SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(data: object) -> str:
    """``data`` as JSON safe to embed in a ``<script type="application/json">`` element, whatever its strings hold."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return "".join(SCRIPT_UNSAFE.get(ch, ch) for ch in text)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def verdict_tag(verdict: str) -> str:
    """A verdict as a coloured tag that also carries a glyph, so it reads without colour too."""
    kind = {"better": "better", "faster": "better", "worse": "worse", "slower": "worse"}.get(verdict, "same")
    glyph = {"better": "\u25b2 ", "worse": "\u25bc "}[kind] if kind != "same" else "= "
    return f'<span class="verdict v-{kind}">{glyph}{esc(verdict)}</span>'


def html_table(frame: pd.DataFrame, numeric: set[str] = frozenset(), raw_html: set[str] = frozenset()) -> str:
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{esc(c)}</th>' for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            value = row[c] if c in raw_html else esc(row[c])
            cells.append(f'<td class="{"num" if c in numeric else ""}">{value}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def trials_text(trials: int) -> str:
    return f"{trials} trial" + ("" if trials == 1 else "s")


def p_text(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"
