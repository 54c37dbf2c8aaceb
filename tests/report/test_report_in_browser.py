"""report.html as people see it: opened in a real headless Chromium, offline.

Each report (fine-tune, optimize) is written from realistic metrics (tests/report/samples.py),
loaded from file://, and checked as rendered: the title and headings, the key figures, the
charts drawn (SVG with a size, paths and points), no console error, no page error, no request
leaving the file, and no horizontal overflow of the page on a phone-sized screen.  A full-page
screenshot of each is written to the test's tmp folder, and also to $SLMOPS_SCREENSHOTS when set
(``SLMOPS_SCREENSHOTS=/tmp pytest tests/report`` leaves /tmp/report-finetune.png, ...).

Chromium comes from the OS packages (``apt-get install chromium``; scripts/setup.sh installs it
where it can), driven by playwright without a browser download of its own.  Elsewhere these
tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.report import samples

CHROMIUM = Path(os.environ.get("SLMOPS_CHROMIUM", "/usr/bin/chromium"))
# As root, without a network: no sandbox, and none of Chromium's own connections.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDE, NARROW = {"width": 1280, "height": 800}, {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: scripts/setup.sh"
    )
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport=WIDE,
        )
        try:
            yield context
        finally:
            context.close()


class Visit:
    """One page loaded from a file, with what it said on the console and asked of the network."""

    def __init__(self, context: Any, path: Path) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on(
            "console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri(), wait_until="load")

    def eval(self, script: str) -> Any:
        return self.page.evaluate(script)

    def check_page(self, path: Path, *, title: str, name: str, phase: str) -> None:
        page = self.page
        assert page.title() == title
        assert name in page.inner_text("h1") and phase in page.inner_text("header.job .badge")
        assert len(page.inner_text("body")) > 500
        assert page.locator("h2").count() >= 3 and page.locator(".figure").count() >= 3
        # Offline: the page asks for nothing but itself (and its inline data: images).
        assert [u for u in self.requests if u != path.as_uri() and not u.startswith("data:")] == []

    def check_narrow(self) -> None:
        """On a phone the page does not scroll sideways (wide tables and charts scroll in their box)."""
        self.page.set_viewport_size(NARROW)
        assert self.eval("document.documentElement.scrollWidth") <= NARROW["width"]
        self.page.set_viewport_size(WIDE)

    def screenshot(self, tmp_path: Path, name: str) -> Path:
        shot = tmp_path / f"report-{name}.png"
        self.page.screenshot(path=shot, full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("SLMOPS_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["SLMOPS_SCREENSHOTS"]) / shot.name)
        return shot


SIZES = "[...document.querySelectorAll(SEL)].map(e => {const r = e.getBoundingClientRect(); return [r.width, r.height]})"


def sizes(visit: Visit, selector: str) -> list[list[float]]:
    return visit.eval(f"(() => {{ const SEL = {selector!r}; return {SIZES}; }})()")


def test_finetune_report(browser, tmp_path: Path):
    from slmops_pipelines.stages.search import plot_search
    from slmops_pipelines.steps.report.finetune import write_report

    metrics = samples.finetune_metrics(search=True)
    path = write_report(
        metrics,
        tmp_path,
        title="FineTuneJob smollm2-tone",
        search_plot=plot_search(metrics["search"], tmp_path / "search.png"),
    )
    visit = Visit(browser, path)
    visit.check_page(path, title="FineTuneJob smollm2-tone", name="smollm2-tone", phase="Succeeded")
    header = visit.page.inner_text("header.job")
    assert "SmolLM2-135M-Instruct" in header and "LoRA" in header and "60 of 60" in header
    figures = visit.page.inner_text(".figures")
    assert "15.6%→96.9%" in figures.replace(" ", "") and "202" in figures and "4 min 12 s" in figures

    # The loss curve: an SVG with a size, both series drawn as paths, one point per logged value.
    chart = "#loss svg"
    assert all(w > 600 and h > 250 for w, h in sizes(visit, chart))
    drawn = visit.eval(
        f"[...document.querySelectorAll('{chart} path.series')].map(p => [p.dataset.series, p.getTotalLength()])"
    )
    assert [name for name, _ in drawn] == ["train loss", "eval loss"] and all(
        length > 100 for _, length in drawn
    )
    logged = [h for h in metrics["log_history"] if "loss" in h or "eval_loss" in h]
    assert visit.page.locator(f"{chart} circle").count() == len(logged)
    assert visit.page.locator(f"{chart} text", has_text="step").count() == 1  # the axis label
    assert visit.page.locator(f"{chart} text", has_text="loss").count() == 1

    # The search plot (an embedded PNG) decoded and shown.
    assert visit.eval("document.querySelector('#search img').naturalWidth") > 100
    assert "accuracy, fine-tuned" in visit.page.inner_text("#training")
    assert visit.page.locator("#evaluation tbody tr").count() == 2 + 6  # accuracy, f1; six samples
    assert visit.errors == []
    visit.check_narrow()
    visit.screenshot(tmp_path, "finetune")


def test_optimize_report(browser, tmp_path: Path):
    from slmops_pipelines.steps.report.optimize import write_optimize_report

    doc = samples.optimize_doc()
    path = write_optimize_report(doc, tmp_path, title="OptimizeJob smollm2-tone-cpu")
    visit = Visit(browser, path)
    visit.check_page(path, title="OptimizeJob smollm2-tone-cpu", name="smollm2-tone-cpu", phase="Succeeded")
    assert "FineTuneJob smollm2-tone" in visit.page.inner_text("header.job")

    # A card per target: speedup, size, accuracy, and a badge per gate.
    cards = visit.page.locator(".target")
    assert cards.count() == 3
    assert "2.42x" in cards.nth(0).inner_text() and "138 MB" in cards.nth(0).inner_text()
    assert visit.page.locator(".target .badge.ok").count() == 4
    assert "skipped: provider not available" in cards.nth(2).inner_text()

    # The comparison: a row per model, PyTorch references first.
    rows = visit.page.locator("#comparison tbody tr")
    assert rows.count() == 2 + 3 and rows.nth(2).inner_text().startswith("cpu-int4")

    # Three bar charts (speed, accuracy, size) with a bar per measured model; n/a for the skipped one.
    assert visit.page.locator("#charts svg").count() == 3
    bars = sizes(visit, "#charts rect.bar")
    assert len(bars) == 3 + 3 + 4 and all(w > 1 and h > 10 for w, h in bars)
    assert visit.page.locator("#gates tbody tr").count() == len(doc["gates"])
    assert visit.errors == []
    visit.check_narrow()
    visit.screenshot(tmp_path, "optimize")


def test_a_violated_gate_shows_on_the_page(browser, tmp_path: Path):
    from slmops_pipelines.steps.report.optimize import write_optimize_report

    path = write_optimize_report(samples.optimize_doc(violated=True), tmp_path, title="OptimizeJob x")
    visit = Visit(browser, path)
    assert "Failed: gate violated" in visit.page.inner_text("header.job .badge.bad")
    assert "✗ accuracy drop ≤ 0.02" in visit.page.inner_text(".target .badge.bad")
    assert visit.page.inner_text("#gates .badge.bad") == "VIOLATED"
    assert visit.errors == []


def test_a_finetune_report_with_little_to_show(browser, tmp_path: Path):
    """No evaluation, no eval split, one logged loss: still a page, and no error."""
    from slmops_pipelines.steps.report.finetune import write_report

    metrics = samples.finetune_metrics()
    metrics.update(evaluation=None, log_history=[{"loss": 2.5, "step": 5}])
    metrics["data"]["eval"] = None
    metrics["train"]["eval_loss"] = None
    path = write_report(metrics, tmp_path, title="FineTuneJob smollm2-tone")
    visit = Visit(browser, path)
    assert visit.page.locator("#loss circle").count() == 1 and visit.page.locator("#evaluation").count() == 0
    assert visit.errors == []
    visit.check_narrow()
