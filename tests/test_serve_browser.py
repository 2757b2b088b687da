"""End to end in a real browser: `posetune serve` as a subprocess, headless Chromium driven by Selenium.

Needs Debian's chromium and chromium-driver (`scripts/ensure-chromium.sh`, run by `make test`);
skipped with the reason when they are missing. Environment knobs, for the README figure:
POSETUNE_SERVE_RUN=RUN serves that run instead of the tiny test run (exported to ONNX if needed),
POSETUNE_SCREENSHOT=docs/serve.png also saves the page there.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMEDRIVER, CHROMIUM, chrome, serving

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromedriver are needed: bash scripts/ensure-chromium.sh")


@pytest.fixture(scope="module")
def served_run(onnx_run: Path) -> Path:
    run = Path(os.environ.get("POSETUNE_SERVE_RUN", onnx_run))
    if not (run / "model.onnx").exists():
        import posetune

        posetune.export(run, format="onnx")
    return run


@pytest.fixture(scope="module")
def server(served_run: Path, tmp_path_factory):
    with serving(served_run, tmp_path_factory.mktemp("serve") / "server.log", "--engine", "onnx") as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path):
    driver = chrome(tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


def yoga_photo(path: Path, pose: str = "tree") -> Path:
    from posetune.data.synth import render_pose

    render_pose(pose, np.random.default_rng(7), 320).save(path, quality=92)
    return path


def api_predict(url: str, image: Path) -> dict:
    req = urllib.request.Request(f"{url}/predict", data=image.read_bytes(), headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def test_page_names_the_pose_of_an_uploaded_photo(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = yoga_photo(tmp_path / "tree.jpg")
    expected = api_predict(server, photo)
    browser.get(server)
    WebDriverWait(browser, 20).until(lambda d: "poses:" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("data-state") in ("done", "error"))
    result = browser.find_element(By.ID, "result")
    assert result.get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
    label = browser.find_element(By.ID, "prediction").get_attribute("data-label")
    info = json.load(urllib.request.urlopen(f"{server}/info", timeout=10))
    assert label in info["classes"] and label == expected["prediction"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars li")
    assert len(bars) == len(expected["top_k"]) and label.replace("_", " ") in bars[0].text
    assert browser.find_element(By.ID, "preview").is_displayed()

    browser.save_screenshot(str(tmp_path / "serve.png"))
    if os.environ.get("POSETUNE_SCREENSHOT"):
        Path(os.environ["POSETUNE_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(os.environ["POSETUNE_SCREENSHOT"])

    # Phone-sized: nothing wider than the screen.
    browser.set_window_size(390, 844)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_page_shows_the_servers_error_for_a_non_image(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a photo at all")
    browser.get(server)
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == "error")
    assert "image" in browser.find_element(By.ID, "error").text


def loaded_urls(browser) -> list[str]:
    """Every URL the page fetched (the document, scripts, styles, images, XHR/fetch)."""
    return browser.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))")


# ReDoc 2's side menu always shows Redocly's logo from their CDN (no option turns it off); the page's
# Content-Security-Policy refuses it, so nothing leaves the browser, and the logo hides itself on the error.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.parametrize("page, selector", [("/docs", ".opblock-summary-path"), ("/redoc", "[data-section-id]")])
def test_api_docs_list_the_operations_offline(server: str, browser, page: str, selector: str) -> None:
    """Swagger UI at /docs and ReDoc at /redoc render the API from this server's own assets, with no network:
    every operation is listed, /docs fetches nothing from another origin and logs no error; /redoc only tries
    ReDoc's logo, which the page's policy refuses."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + page)
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, selector)) >= 3)
    text = browser.find_element(By.TAG_NAME, "body").text
    for operation in ("/predict", "/health", "/info", "/metrics"):
        assert operation in text, f"{operation} is not listed on {page}"
    assert "Name the pose in one photo" in text
    urls = loaded_urls(browser)
    assert any("/docs-assets/" in u for u in urls) and any(u.endswith("/openapi.json") for u in urls), urls
    elsewhere = [u for u in urls if not u.startswith(server + "/")]
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    if page == "/docs":
        assert elsewhere == [] and errors == [], (elsewhere, errors)
    else:
        assert set(elsewhere) <= {REDOC_LOGO}, elsewhere
        assert all(REDOC_LOGO in e and "Content Security Policy" in e for e in errors), errors
        assert browser.find_elements(By.CSS_SELECTOR, "img[alt='redocly logo']") == []  # refused: it removed itself


@pytest.fixture(scope="module")
def pose_only_server(tmp_path_factory):
    """`posetune serve` of a `pose` run (landmarks alone, ~5 s to train on synthetic figures)."""
    pytest.importorskip("mediapipe", reason="posetune[pose] not installed")
    import posetune
    from posetune.data.synth import render_pose

    root = tmp_path_factory.mktemp("pose-serve")
    for pose in ("tree", "goddess"):
        (root / "data" / pose).mkdir(parents=True)
        for seed in range(3):
            render_pose(pose, np.random.default_rng(seed), size=128).save(root / "data" / pose / f"{seed}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSETUNE_CACHE", str(root / "cache"))
        posetune.train(root / "data", backbone="pose", strategy="linear", epochs=2, batch_size=8, out=str(root / "run"))
    with serving(root / "run", root / "server.log", "--engine", "torch") as url:
        yield url


def _painted(browser) -> int:
    return browser.execute_script("""
        const c = document.getElementById("skeleton");
        const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let painted = 0;
        for (let i = 3; i < data.length; i += 4) painted += data[i] > 0;
        return painted;""")


def test_page_draws_a_pose_runs_skeleton_and_says_when_nobody_is_there(pose_only_server: str, browser,
                                                                        tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage.data import astronaut

    photo, blank = tmp_path / "astronaut.jpg", tmp_path / "wall.jpg"
    Image.fromarray(astronaut()).save(photo, quality=92)
    Image.new("RGB", (320, 240), "white").save(blank)
    assert json.load(urllib.request.urlopen(f"{pose_only_server}/info", timeout=10))["uses_pose"] is True
    browser.get(pose_only_server)
    WebDriverWait(browser, 20).until(lambda d: "poses:" in d.find_element(By.ID, "model").text)
    for image, person in ((photo, True), (blank, False)):
        expected = api_predict(pose_only_server, image)
        assert expected["no_person"] is not person and expected["pose"]["detected"] is person
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(
            lambda d, label=expected["prediction"]: d.find_element(By.ID, "result").get_attribute("data-state")
            == "done" and d.find_element(By.ID, "prediction").get_attribute("data-label") == label)
        WebDriverWait(browser, 10).until(lambda d, person=person: (_painted(d) > 500) is person)
        text = browser.find_element(By.ID, "probability").text
        assert ("found nobody" in text) is not person, text
