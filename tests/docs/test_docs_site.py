"""The documentation site as a reader meets it: built, every local link and image resolving, and in headless
Chromium the index, a tutorial with its figures and an API page load without console errors, and the search
finds ``project_many``.

Uses ``docs/_build/html`` when ``./run.sh docs`` built it (``.ci/run`` does, before the tests), else builds the
site into a temporary folder. Skipped, with the reason, without Sphinx or without Debian's chromium.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import BROKEN_IMAGES_JS, chromium

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    built = ROOT / "docs" / "_build" / "html"
    if (built / "index.html").is_file():
        return built
    pytest.importorskip("sphinx", reason="building the docs needs sphinx (./run.sh venv installs requirements.lock)")
    out = tmp_path_factory.mktemp("docs") / "html"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(out)], capture_output=True, text=True, check=False,
                          env=dict(os.environ, DECONVNET_OFFLINE="1", MPLBACKEND="Agg"))
    assert done.returncode == 0, done.stdout + done.stderr
    return out


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and ((tag == "a" and name == "href") or (tag in ("img", "script") and name == "src")
                          or (tag == "link" and name == "href")):
                self.refs.append(value)


@pytest.mark.slow
def test_every_local_link_and_image_resolves(site):
    pages = sorted(site.rglob("*.html"))
    for must in ("index.html", "getting-started.html", "reference/api/Deconvnet.html", "reference/cli/figures.html",
                 "tutorials/02_top9_atlas.html", "how-to/index.html", "explanation/index.html", "search.html"):
        assert (site / must).is_file(), must
    missing = []
    for page in pages:
        parser = _Refs()
        parser.feed(page.read_text(errors="replace"))
        for ref in parser.refs:
            url = urlparse(ref)
            if url.scheme or ref.startswith(("#", "//", "mailto:")):
                assert url.scheme not in ("http", "https") or "example.org" in ref or url.netloc, ref
                continue
            target = (page.parent / unquote(url.path)).resolve()
            if not target.exists():
                missing.append(f"{page.relative_to(site)} -> {ref}")
    assert not missing, missing[:20]


def test_the_tutorials_show_the_main_jobs_figures(site):
    html = (site / "tutorials" / "02_top9_atlas.html").read_text()
    assert "top9_vgg16_conv4_3" in html and "plot_layer_grid" in html
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (site / "tutorials" / f"{nb.stem}.html").is_file(), nb.name


@pytest.fixture(scope="module")
def browser():
    yield from chromium("--allow-file-access-from-files")


def _load(driver, url: str) -> int:
    """Open a page: no console errors or warnings, every image decoded, nothing fetched but local files."""
    driver.get_log("performance")
    driver.get(url)
    broken = driver.execute_async_script(BROKEN_IMAGES_JS)
    problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems
    assert broken == [], broken
    requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), [u for u in urls if not u.startswith("file")]
    return driver.execute_script("return document.images.length")


@pytest.mark.browser
def test_in_a_browser(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    shots = Path(os.environ.get("DECONVNET_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    assert _load(browser, (site / "index.html").as_uri()) >= 1
    assert "deconvnet" in browser.title
    nav = browser.find_element(By.CSS_SELECTOR, ".sidebar-tree").text
    for part in ("Getting started", "Tutorials", "How-to guides", "Explanation", "Reference"):
        assert part in nav, nav
    browser.save_screenshot(str(shots / "docs_index.png"))

    n = _load(browser, (site / "tutorials" / "02_top9_atlas.html").as_uri())
    assert n >= 2  # the main job's top-9 figures
    browser.save_screenshot(str(shots / "docs_tutorial.png"))

    # a page with formulas: MathJax is served from the site itself and typesets them
    _load(browser, (site / "tutorials" / "03_restoring_resolution.html").as_uri())
    deadline = time.time() + 30
    while time.time() < deadline and not browser.find_elements(By.CSS_SELECTOR, "mjx-container"):
        time.sleep(0.2)
    assert browser.find_elements(By.CSS_SELECTOR, "mjx-container"), "no formula typeset"

    _load(browser, (site / "reference" / "api" / "Deconvnet.html").as_uri())
    body = browser.find_element(By.TAG_NAME, "article").text
    assert "project_many" in body and "project" in body
    browser.save_screenshot(str(shots / "docs_api_deconvnet.png"))

    # the site's own search (a script reading searchindex.js)
    browser.get((site / "search.html").as_uri() + "?q=project_many")
    deadline, hits = time.time() + 30, []
    while time.time() < deadline and not hits:
        hits = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#search-results a")]
        time.sleep(0.2)
    assert any("Deconvnet.html" in h for h in hits), hits
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    browser.save_screenshot(str(shots / "docs_search.png"))


def test_run_sh_docs_builds_offline_with_warnings_as_errors():
    """``./run.sh docs``, as a dry run (nothing is set up or started): Sphinx, warnings as errors, into
    docs/_build/html."""
    done = subprocess.run([str(ROOT / "run.sh"), "docs"], env=dict(os.environ, DECONVNET_DRY_RUN="1"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [".venv/bin/python", "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                                   "docs", "docs/_build/html"]
