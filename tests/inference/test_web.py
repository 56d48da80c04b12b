"""The service's web page and API docs in a real browser (headless Chromium driven by Selenium, the
system's chromedriver): what the page shows equals the server's answers, refusals are explained,
the API key is asked for, and nothing loads from another origin."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import time

import nibabel as nib
import numpy as np
import pytest

from medtrain.inference.predictor import Predictor
from medtrain.inference.serve import create_app
from tests.inference.test_serve import encode, fetch, grey, post, start, stop

INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="needs selenium: pip install -c constraints.txt -e '.[dev]'"
)
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(f"needs chromium and chromedriver: {INSTALL}", allow_module_level=True)

KEY = "s3cret"
CSS = "css selector"  # selenium's By.CSS_SELECTOR


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; the system chromedriver, so that Selenium Manager
    never looks for (or downloads) one."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)  # no sandbox: CI runs as root
    options.add_argument("--window-size=1200,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(options, webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def servers(finished_runs):
    classification = Predictor(finished_runs["classification"])
    running = {
        "classification": start(create_app(classification)),
        "segmentation": start(create_app(Predictor(finished_runs["segmentation"]))),
        "keyed": start(create_app(classification, api_key=KEY)),
    }
    yield {name: server.port for name, server in running.items()}
    for server in running.values():
        stop(server)


def wait(condition, timeout: float = 10.0):
    """`condition()` once it is truthy (checked every 20 ms); fails after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # the element is not there yet, or was just replaced
            value = None
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.02)


def text(driver, selector: str) -> str:
    """The visible text of the first element at `selector` ('' while there is none or it is hidden)."""
    found = driver.find_elements(CSS, selector)
    return found[0].text if found and found[0].is_displayed() else ""


def open_page(driver, port: int, path: str = "/") -> str:
    origin = f"http://127.0.0.1:{port}"
    driver.get_log("browser")  # read: `only_local` sees this page's messages only
    driver.get(origin + path)
    return origin


def upload(driver, tmp_path, name: str, data: bytes) -> None:
    """Choose `data` as file `name` in the page's file input, as a user would."""
    folder = tmp_path / f"upload{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / name).write_bytes(data)
    driver.find_element(CSS, "#file").send_keys(str(folder / name))


def wait_result(driver) -> None:
    """Until the page shows a result or an error (the status line empties when the answer is in)."""
    wait(lambda: text(driver, "#result") or text(driver, "#error"))


def only_local(driver, origin: str) -> None:
    """Every resource the page loaded came from `origin`, and the console has no errors (a
    Content-Security-Policy refusal would be one)."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
    )
    assert all(name.startswith((origin, "data:", "blob:")) for name in names), names
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def info_of(port: int, headers=None) -> tuple[int, dict]:
    status, _, body = fetch(port, "GET", "/info", headers=headers)
    return status, json.loads(body)


# -- the page ------------------------------------------------------------------------------------
def test_classification(browser, servers, tmp_path):
    port = servers["classification"]
    origin = open_page(browser, port)
    _, info = info_of(port)
    assert wait(lambda: text(browser, "#weights")) == info["weights_sha256"]
    card = text(browser, "#card")
    assert "normal, lesion" in card and "16 × 16" in card and "auc" in card
    if "test/auc_ci_low" in info["test_metrics"]:  # shown with its confidence interval
        row = next(r for r in browser.find_elements(CSS, "#card tr") if r.text.startswith("auc "))
        assert row.text.endswith(f"{info['test_metrics']['test/auc_ci_high']:.3f}")
    data = encode(grey(1, (32, 32)), "PNG")
    _, answer = post(port, "/predict", ("file", "scan.png", data))
    upload(browser, tmp_path, "scan.png", data)
    wait_result(browser)
    assert text(browser, "#result h3") == "scan.png"
    assert text(browser, "#label") == answer["label"]
    shown = {
        row.get_attribute("data-class"): row.find_element(CSS, ".pct").text
        for row in browser.find_elements(CSS, ".bars li")
    }
    assert shown == {name: f"{100 * p:.1f} %" for name, p in answer["probabilities"].items()}
    chosen = browser.find_element(CSS, ".bars li.chosen").get_attribute("data-class")
    assert chosen == answer["label"]
    only_local(browser, origin)


def test_refused_uploads_are_explained(browser, servers, tmp_path):
    port = servers["classification"]
    open_page(browser, port)
    wait(lambda: text(browser, "#weights"))
    volume = nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)).to_bytes()
    refused = [
        ("<img src=x onerror=alert(1)>.png", b"just some text"),  # shown as text
        ("ct.nii.gz", gzip.compress(volume)),  # a volume for a 2D run
        ("notes.txt", b"\x00\x01 plain bytes"),
    ]
    for name, data in refused:
        status, answer = post(port, "/predict", ("file", name, data))
        assert 400 <= status < 500
        upload(browser, tmp_path, name, data)
        wait_result(browser)
        message = text(browser, "#error")
        assert message.startswith(f"{name}: {status} ") and message.endswith(answer["detail"])
        assert not browser.find_elements(CSS, "#error *")  # no markup from the name
        assert not text(browser, "#result")


def test_segmentation(browser, servers, tmp_path):
    port = servers["segmentation"]
    origin = open_page(browser, port)
    wait(lambda: text(browser, "#weights"))
    assert browser.find_element(CSS, "#spacing").is_displayed()
    rows, cols = np.mgrid[:48, :48]
    image = np.where((rows - 20) ** 2 + (cols - 24) ** 2 < 90, 220, 40).astype(np.uint8)
    data = encode(image, "PNG")
    _, answer = post(port, "/predict", ("file", "seg.png", data), ("overlay", None, b"true"))
    upload(browser, tmp_path, "seg.png", data)
    wait_result(browser)
    overlay = browser.find_element(CSS, "#result img.overlay")
    assert wait(lambda: browser.execute_script("return arguments[0].naturalWidth", overlay)) == 48
    totals = browser.find_elements(CSS, "#result table:not(#measurements) tbody tr")
    assert len(totals) == len(answer["totals"])
    measured = browser.find_elements(CSS, "#measurements tbody tr")
    assert len(measured) == len(answer["measurements"])
    link = browser.find_element(CSS, "#result a[download]")
    assert link.get_attribute("download") == "seg_mask.png"
    assert link.get_attribute("href") == f"data:image/png;base64,{answer['mask']}"
    only_local(browser, origin)


def test_api_key(browser, servers, tmp_path):
    port = servers["keyed"]
    open_page(browser, port)
    data = encode(grey(2, (32, 32)), "PNG")
    if info_of(port)[0] == 401:  # the model's card is behind the key too
        wait(lambda: text(browser, "#card-status").startswith("401 "))
        assert "API key" in text(browser, "#card-status") and not text(browser, "#weights")
        assert browser.find_element(CSS, "#key-panel").get_attribute("open") is not None
    upload(browser, tmp_path, "a.png", data)
    wait_result(browser)
    assert re.match(r"a\.png: 401 API key needed: missing API key", text(browser, "#error"))
    if browser.find_element(CSS, "#key-panel").get_attribute("open") is None:
        browser.find_element(CSS, "#key-panel summary").click()
    field = browser.find_element(CSS, "#api-key")
    field.send_keys(KEY + "\n")  # Enter submits
    _, info = info_of(port, {"X-API-Key": KEY})
    assert wait(lambda: text(browser, "#weights")) == info["weights_sha256"]
    assert browser.execute_script("return sessionStorage.getItem('medtrain.apiKey')") == KEY
    assert browser.execute_script("return localStorage.length") == 0
    assert field.get_attribute("value") == ""  # not left on screen
    _, answer = post(port, "/predict", ("file", "a.png", data), headers={"X-API-Key": KEY})
    upload(browser, tmp_path, "a.png", data)
    wait_result(browser)
    assert text(browser, "#label") == answer["label"]


# -- the API docs --------------------------------------------------------------------------------
def test_docs_are_offline(browser, servers):
    port = servers["classification"]
    for path in ("/", "/docs"):
        status, headers, body = fetch(port, "GET", path)
        assert status == 200 and "default-src 'self'" in headers["content-security-policy"]
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]*)""", body.decode())
        assert urls and not [u for u in urls if re.match(r"(?i)([a-z]+:)?//", u)], urls
    for path in ("/docs/oauth2-redirect", "/favicon.ico", "/static/app.js"):
        assert fetch(port, "GET", path)[0] == 200, path
    origin = open_page(browser, port, "/docs")
    title = wait(lambda: text(browser, ".swagger-ui .info .title"))
    assert title.startswith("medtrain classification")
    assert text(browser, ".swagger-ui .opblock-summary-path[data-path='/predict']") == "/predict"
    only_local(browser, origin)
    assert fetch(port, "GET", "/redoc")[0] == 404  # ReDoc would show a logo from its CDN
