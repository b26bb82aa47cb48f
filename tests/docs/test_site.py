"""The documentation site is tested like code: it builds with `mkdocs build --strict`, its
generated reference covers every command, public name and module, and served from 127.0.0.1
it opens in headless Chromium with no console error, no broken internal link and a search that
answers offline. Each check also runs on a broken copy, which it must catch."""

from __future__ import annotations

import ast
import functools
import html
import http.server
import re
import shutil
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"sauce_jax": ROOT / "sauce_jax", "sauce_jax.ports": ROOT / "ports",
           "sauce_jax.train": ROOT / "train", "sauce_jax.eval": ROOT / "eval"}


# ------------------------------------------------------------------------------ the reference

def command_paths(parser, prefix=()) -> list[tuple[str, ...]]:
    """Every command and subcommand of an argparse parser, walked through its subparsers."""
    import argparse

    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths += command_paths(sub, (*prefix, name))
    return paths


def headings(page: str) -> set[str]:
    """The text of every h1-h4 of a built page (without the permalink mark)."""
    found = re.findall(r"<h[1-4][^>]*>(.*?)</h[1-4]>", page, re.S)
    return {html.unescape(re.sub(r"<[^>]+>", "", h)).replace("¶", "").strip() for h in found}


def missing_commands(page: str, paths) -> list[str]:
    """Commands without their own heading, `sauce-jax experiment table2`, and their --help text."""
    titles = headings(page)
    missing = []
    for path in paths:
        title = "sauce-jax " + " ".join(path)
        usage = "usage: " + title
        if title not in titles or usage not in html.unescape(re.sub(r"<[^>]+>", "", page)):
            missing.append(title)
    return missing


def test_the_command_line_page_has_every_command(site):
    from sauce_jax.cli import build_parser

    paths = command_paths(build_parser())
    assert ("experiment", "table2") in paths and ("conceptworld", "train") in paths  # nested subcommands walked
    page = (site / "reference" / "cli" / "index.html").read_text()
    assert missing_commands(page, paths) == []
    # control: a page that lost one command's section
    cut = re.sub(r'<h3 id="sauce-jax-experiment-table2".*?(?=<h[23] )', "", page, count=1, flags=re.S)
    assert cut != page and missing_commands(cut, paths) == ["sauce-jax experiment table2"]


def test_the_api_page_has_every_public_name(site):
    import sauce_jax

    page = (site / "reference" / "api" / "index.html").read_text()
    ids = set(re.findall(r'\bid="(sauce_jax\.[\w.]+)"', page))
    names = [n for n in sauce_jax.__all__ if not n.startswith("__")]
    missing = [n for n in names if not any(i.endswith("." + n) for i in ids)]
    assert missing == []
    assert any("unlearn" in i for i in ids) and "Score every SAE feature" in page  # docstrings are rendered


def _modules() -> list[str]:
    found = []
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found.append(".".join([package, *parts]))
    return found


def test_the_layout_page_has_the_layering_rule_and_every_module(site):
    page = html.unescape((site / "reference" / "layout" / "index.html").read_text())
    tree = ast.parse((ROOT / "tests" / "test_layout.py").read_text())
    layers = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", None) == "LAYERS" for t in n.targets))
    assert "  &lt;-  ".join(layers) in page or "  <-  ".join(layers) in page
    first_line = ast.get_docstring(tree).splitlines()[0]
    assert first_line in page
    missing = [m for m in _modules() if f"<code>{m}</code>" not in page]
    assert missing == []


# ------------------------------------------------------------------------------ the browser

def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs the test extra (selenium)")
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (see the README's test command)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver))
    driver.set_page_load_timeout(30)
    return driver


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the browser dropping a connection it no longer needs is no failure of the site


@contextmanager
def served(folder: Path):
    """`folder` over HTTP on 127.0.0.1 (a free port), in a thread; yields the base URL."""
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


REFS = """return Array.from(document.querySelectorAll('a[href], link[href], script[src], img[src]'))
  .map(e => [e.tagName, e.getAttribute('href') || e.getAttribute('src')]);"""


def _status(url: str, cache: dict) -> int:
    if url not in cache:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                cache[url] = reply.status
        except urllib.error.HTTPError as exc:
            cache[url] = exc.code
    return cache[url]


def problems(driver, base: str, pages: list[str]) -> list[str]:
    """Open each page: its SEVERE console entries, a relative reference that does not answer
    200, and an asset (stylesheet, script, image) fetched from anywhere but this server."""
    found, cache = [], {}
    for page in pages:
        url = urljoin(base, page)
        driver.get(url)
        found += [f"{page}: console {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        for tag, ref in driver.execute_script(REFS):
            parsed = urlparse(ref)
            if parsed.scheme or parsed.netloc:
                if tag != "A" and not ref.startswith(base):
                    found.append(f"{page}: {tag.lower()} {ref} is not served by the site")
                continue
            if ref.startswith("#") or not parsed.path:
                continue
            target = urljoin(url, parsed.path)
            if _status(target, cache) != 200:
                found.append(f"{page}: {tag.lower()} {ref} -> HTTP {_status(target, cache)}")
    return found


def search_results(driver, base: str, query: str, wait_s: float = 15) -> list[str]:
    """Type `query` into the site's search box and return the titles of the results (none after `wait_s`)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base)
    box = driver.find_element(By.CSS_SELECTOR, "input.md-search__input")
    if not box.is_displayed():  # a narrow window hides the box behind the header's search button
        driver.find_element(By.CSS_SELECTOR, "label.md-header__button[for='__search']").click()
        WebDriverWait(driver, 10).until(lambda d: box.is_displayed())
    box.click()
    box.send_keys(query)
    try:
        WebDriverWait(driver, wait_s).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
    except Exception:  # noqa: BLE001 - no result in time: the caller sees an empty list
        return []
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item h1, .md-search-result__item h2")]


def test_the_site_opens_in_chromium(site, tmp_path):
    pages = sorted(p.parent.relative_to(site).as_posix() + "/" for p in site.rglob("index.html")
                   if p.parent != site and p.parent.name != "404")
    pages = [""] + pages
    assert len(pages) >= 30 and "reference/cli/" in pages and "studies/five-seed/" in pages

    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    guide = broken / "guide" / "training" / "index.html"
    text = guide.read_text()
    text = text.replace('href="../unlearning/"', 'href="../no-such-page/"', 1)
    text = text.replace("</body>", "<script>notDefined();</script></body>", 1)
    guide.write_text(text)
    (broken / "assets" / "javascripts" / "workers").rename(broken / "assets" / "javascripts" / "moved")

    driver = _chromium()
    try:
        with served(site) as base:
            assert problems(driver, base, pages) == []
            titles = search_results(driver, base, "gamma")
        with served(broken) as base:
            control = problems(driver, base, ["guide/training/"])
            control_titles = search_results(driver, base, "gamma", wait_s=3)
    finally:
        driver.quit()
    assert titles, "the search found nothing for 'gamma'"
    assert any("no-such-page" in p and "404" in p for p in control), control
    assert any("notDefined" in p for p in control), control
    assert control_titles == []  # without its worker the search answers nothing
