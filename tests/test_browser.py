"""The web page in a real headless Chromium (Debian's, driven by Playwright): search, pick two watched
movies, ask for recommendations, see ten rows with a gate bar each. Marked `browser`; skipped with the reason
when Playwright or Chromium is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from server import running_server

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if CHROMIUM is None:
    pytest.skip("no Chromium on this machine (apt-get install chromium)", allow_module_level=True)


def test_pick_movies_and_get_ten_recommendations(tiny_amfrec_run: Path, tmp_path: Path) -> None:
    with running_server(tiny_amfrec_run) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(url)
        page.wait_for_function("document.querySelector('#info').textContent.includes('amfrec on')")
        page.fill("#search", "movie 1")
        page.wait_for_selector("#results li")
        results = page.locator("#results li")
        texts = results.all_inner_texts()
        assert len(texts) >= 2 and all("movie" in t.lower() and "1" in t for t in texts)
        results.nth(0).click()
        results.nth(1).click()
        assert page.locator("#history li").count() == 2
        page.click("#recommend")
        page.wait_for_function("document.querySelectorAll('#recs li').length === 10")
        rows = page.locator("#recs li")
        assert rows.locator(".bar").count() == 10
        widths = (
            rows.nth(0).locator(".bar span").evaluate_all("els => els.map(e => parseFloat(e.style.width))")
        )
        assert len(widths) == 3 and abs(sum(widths) - 100) < 1.0  # id, text, image shares of one
        assert "amfrec: top 10" in page.inner_text("#status")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert not failed, failed  # everything is served locally: no external request
    assert (tmp_path / "page.png").stat().st_size > 10_000
