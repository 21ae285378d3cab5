"""The report's results table: its key columns and their help, and the data its script sorts and filters.

``KEY_COLUMNS`` (shown by default) and ``HELP`` (explained on hover) come from the row schema, ``diffbench.columns``.
"""

from __future__ import annotations

import pandas as pd

from diffbench.columns import HELP, KEY_COLUMNS
from diffbench.report_format import esc, format_value, json_value, script_json


def constant_columns(frame: pd.DataFrame) -> dict[str, object]:
    """Identity columns among the key columns that hold one value in every row (hidden by default, said once)."""
    identity = ["run", "dataset_label", "denoiser_label", "device", "scenario", "dtype", "compile", "status"]
    return {c: frame[c].iloc[0] for c in identity if c in frame and len(frame) and frame[c].nunique(dropna=False) == 1}


def table_data(frame: pd.DataFrame) -> dict:
    """The results table as the page's script reads it: columns (kind, shown by default), raw values, text.

    Shown by default: the key columns, less identity columns that hold one value throughout
    (empty columns too); the rest appear with "all columns".
    """
    ordered = [c for c in KEY_COLUMNS if c in frame] + [c for c in frame.columns if c not in KEY_COLUMNS]
    frame = frame[ordered]
    hidden = set(constant_columns(frame)) | {c for c in ordered if frame[c].isna().all()}
    columns, raw, text = [], [], []
    for name in ordered:
        series = frame[name]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        shown = name in KEY_COLUMNS and name not in hidden and not (name == "error" and (series.fillna("") == "").all())
        columns.append({"name": name, "kind": "num" if numeric else "text", "shown": shown})
        if name in HELP:
            columns[-1]["help"] = HELP[name]
    for record in frame.itertuples(index=False, name=None):
        raw.append([json_value(v) for v in record])
        text.append([format_value(c, v) for c, v in zip(ordered, record, strict=True)])
    return {"columns": columns, "rows": raw, "text": text}


def table_section(frame: pd.DataFrame) -> str:
    data = script_json(table_data(frame))
    return f"""
<div class="controls">
  <input type="search" id="table-search" placeholder="search every shown column" aria-label="search the table">
  <label><input type="checkbox" id="all-columns"> all {frame.shape[1]} columns</label>
  <button type="button" id="table-reset">reset</button>
  <button type="button" id="csv-download">download CSV of this view</button>
  <span id="row-count" class="small"></span>
</div>
<p class="small">Click a column name to sort (again to reverse). Filter a column by text it contains
(<code>!text</code>: does not contain) or, for numbers, <code>&lt;0.9</code>, <code>&gt;=4</code>,
<code>=8</code>, <code>4..16</code>.
The CSV holds the rows and columns shown, unrounded.</p>
{constant_note(frame)}<div class="scroll"><table id="results"><thead></thead><tbody></tbody></table></div>
<script type="application/json" id="table-data">{data}</script>"""


def constant_note(frame: pd.DataFrame) -> str:
    constant = constant_columns(frame)
    if not constant:
        return ""
    said = ", ".join(f"<code>{esc(k)}</code> = {esc(format_value(k, v))}" for k, v in constant.items())
    return f"<p class='small'>Every row has {said} (hidden; tick <i>all columns</i> to show them).</p>"
