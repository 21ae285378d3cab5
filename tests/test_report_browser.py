"""The report in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Skipped, with the reason, where Playwright or a system Chromium is missing (`.ci/run` installs
both). Playwright never downloads a browser here: it launches the system binary.
"""

import csv
import io
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from diffbench import plots, report

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (the test extra)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None, reason="no system Chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A report opened offline, with every console message, page error and request recorded."""

    def __init__(self, browser, path: Path) -> None:
        self.context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.console, self.requests = [], []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def errors(self) -> list:
        return [m for m in self.console if m[0] in ("error", "pageerror")]

    def network(self) -> list[str]:
        """Requests other than the page itself and its inline data: images."""
        return [u for u in self.requests if u != self.url and not u.startswith(("data:", "blob:"))]

    def rows(self) -> list[list[str]]:
        return self.page.eval_on_selector_all(
            "#results tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
        )

    def headers(self) -> list[str]:
        return self.page.eval_on_selector_all(
            "#results thead tr:first-child th", "cells => cells.map(c => c.firstChild.textContent)"
        )

    def column(self, name: str) -> list[str]:
        index = self.headers().index(name)
        return [row[index] for row in self.rows()]


@pytest.fixture(scope="module")
def single(tmp_path_factory, browser):
    folder = Path(shutil.copytree(REFERENCE, tmp_path_factory.mktemp("r") / "reference"))
    path = report.write_report([folder], folder / "report.html")
    page = Page(browser, path)
    yield page, pd.read_parquet(folder / "results.parquet"), folder
    page.context.close()


def test_the_page_loads_offline_with_no_console_error_and_no_request(single, tmp_path):
    page, _, _ = single
    assert page.errors() == []
    assert page.network() == []
    shot = tmp_path / "report.png"
    page.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000


def test_the_table_renders_every_cell(single):
    page, frame, _ = single
    shown = page.headers()
    assert len(page.rows()) == len(frame) and all(len(r) == len(shown) for r in page.rows())
    assert {"estimator_label", "trials", "accuracy", "nfe_per_sample"} <= set(shown)
    page.page.check("#all-columns")
    assert len(page.headers()) == frame.shape[1]
    cells = page.page.eval_on_selector_all("#results tbody td", "cells => cells.length")
    assert cells == frame.shape[0] * frame.shape[1]
    page.page.uncheck("#all-columns")


def test_sorting_orders_the_rows_and_reverses(single):
    page, frame, _ = single
    header = page.page.locator("#results thead tr:first-child th").filter(has_text=re.compile("^accuracy.?$"))
    header.click()
    values = [float(v) for v in page.column("accuracy")]
    assert values == sorted(values) and values[0] == pytest.approx(frame["accuracy"].min(), abs=5e-4)
    header.click()
    values = [float(v) for v in page.column("accuracy")]
    assert values == sorted(values, reverse=True)
    page.page.click("#table-reset")


def test_filters_keep_the_matching_rows_and_the_csv_holds_exactly_them(single):
    page, frame, _ = single
    page.page.fill("input[data-column='estimator_label']", "truncated")
    assert len(page.rows()) == int((frame["estimator_label"] == "truncated").sum()) > 0
    assert set(page.column("estimator_label")) == {"truncated"}
    page.page.fill("input[data-column='accuracy']", ">0.95")
    expected = frame[(frame["estimator_label"] == "truncated") & (frame["accuracy"] > 0.95)]
    assert len(page.rows()) == len(expected) > 0
    with page.page.expect_download() as download:
        page.page.click("#csv-download")
    text = Path(download.value.path()).read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == len(expected)
    assert sorted(float(r["accuracy"]) for r in table) == sorted(expected["accuracy"].tolist())
    assert list(table[0]) == page.headers()
    page.page.fill("input[data-column='accuracy']", "")
    page.page.fill("input[data-column='estimator_label']", "!truncated")
    assert len(page.rows()) == int((frame["estimator_label"] != "truncated").sum())
    page.page.click("#table-reset")
    assert len(page.rows()) == len(frame)


def test_every_figure_shows(single):
    page, _, folder = single
    expected = sum((folder / p.file).is_file() for p in plots.PLOTS)
    sizes = page.page.eval_on_selector_all(
        "figure img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])"
    )
    assert len(sizes) == expected >= 5
    assert all(done and natural > 100 and width > 100 for done, natural, width in sizes)


def test_the_comparison_page_of_two_runs_loads_clean(browser, tmp_path):
    first = Path(shutil.copytree(REFERENCE, tmp_path / "before"))
    second = Path(shutil.copytree(REFERENCE, tmp_path / "after"))
    page = Page(browser, report.write_report([first, second], tmp_path / "both.html"))
    try:
        assert page.errors() == [] and page.network() == []
        assert page.page.locator("#comparison .verdict").count() >= 36
        frame = pd.read_parquet(first / "results.parquet")
        assert len(page.rows()) == 2 * len(frame)
        page.page.fill("input[data-column='run']", "after")
        assert len(page.rows()) == len(frame)
        sizes = page.page.eval_on_selector_all("#side-by-side img", "imgs => imgs.map(i => i.naturalWidth)")
        assert sizes and all(w > 100 for w in sizes)
    finally:
        page.context.close()


HOSTILE_LABELS = ["<!--<script>", "</script><script>window.pwned=1</script>", "$\\foo{$ & <b>x</b>"]


def test_hostile_labels_render_literally_and_an_injected_script_never_runs(browser, tmp_path):
    folder = Path(shutil.copytree(REFERENCE, tmp_path / "hostile", ignore=shutil.ignore_patterns("*.html")))
    frame = pd.read_parquet(folder / "results.parquet")
    names = list(frame["estimator_label"].unique())
    labels = {old: f"{HOSTILE_LABELS[i % len(HOSTILE_LABELS)]} {i}" for i, old in enumerate(names)}
    frame["estimator_label"] = frame["estimator_label"].map(labels)
    frame.to_parquet(folder / "results.parquet", index=False)
    path = report.write_report([folder], folder / "report.html")
    # an escaping slip anywhere in the page: the content security policy must still keep it from running
    text = path.read_text().replace("</main>", "<script>window.injected = 1</script></main>")
    path.write_text(text)
    page = Page(browser, path)
    try:
        assert len(page.rows()) == len(frame)  # the page's own script ran and the table is whole
        assert set(page.column("estimator_label")) == set(labels.values())  # literally, markup and all
        assert page.page.evaluate("[window.pwned, window.injected]") == [None, None]
        assert page.page.locator("#provenance").count() == 1 and page.page.locator("#failures").count() == 1
        assert page.network() == []
    finally:
        page.context.close()
