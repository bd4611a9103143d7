"""End to end in a real headless Chromium: a real uvicorn server on a free loopback port, the page,
an upload, the label and the overlays. Needs Debian's ``chromium`` and ``chromium-driver``
(``apt-get install -y chromium chromium-driver``); skipped when they are absent.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("selenium")
uvicorn = pytest.importorskip("uvicorn")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from pneumolens.service import ServeSettings, create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() or shutil.which("chromium")) or not Path(CHROMEDRIVER).exists(),
        reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
        "apt-get install -y chromium chromium-driver",
    ),
]


@pytest.fixture(scope="module")
def server_url(tiny_checkpoint_path: Path):
    """A real uvicorn server in a thread, on a free port of 127.0.0.1; stopped after the module."""
    app = create_app(ServeSettings(checkpoint=tiny_checkpoint_path, explain_time_limit_s=120))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1200,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def xray(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    yy = np.mgrid[0:96, 0:80][0]
    img = np.clip(50 + 120 * yy / 96 + rng.normal(0, 15, (96, 80)), 0, 255).astype(np.uint8)
    path = tmp_path / "child-film.png"
    Image.fromarray(img).save(path)
    return path


def severe_console_messages(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_upload_shows_label_probability_and_overlays(browser, server_url, xray):
    browser.get(server_url + "/")
    notice = browser.find_element(By.ID, "notice")
    assert notice.is_displayed() and "not a medical device" in notice.text
    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#methods input[value="occlusion"]'))
    gradcam = browser.find_element(By.CSS_SELECTOR, '#methods input[value="gradcam"]')
    assert gradcam.is_selected()  # the default
    browser.find_element(By.CSS_SELECTOR, '#methods input[value="occlusion"]').click()

    browser.find_element(By.ID, "file-input").send_keys(str(xray))

    wait.until(lambda d: d.find_element(By.ID, "label").text in ("NORMAL", "PNEUMONIA"))
    assert browser.find_element(By.ID, "file-name").text == xray.name
    probability = browser.find_element(By.ID, "probability").text
    assert probability.endswith("%") and 0 <= float(probability.rstrip(" %")) <= 100
    assert browser.find_element(By.ID, "threshold").text == "50.0 %"

    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#explanations figure img")) == 2)
    figures = browser.find_elements(By.CSS_SELECTOR, "#explanations figure")
    assert [f.get_attribute("data-method") for f in figures] == ["gradcam", "occlusion"]
    for figure in figures:
        img = figure.find_element(By.TAG_NAME, "img")
        wait.until(
            lambda d, img=img: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
        )
        assert img.is_displayed()
        assert figure.find_element(By.CLASS_NAME, "timing").text.endswith(("ms", "s"))
        assert figure.find_element(By.CLASS_NAME, "legend").is_displayed()
    # side by side: the two overlays share a row
    tops = {round(f.location["y"]) for f in figures}
    assert len(tops) == 1
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert severe_console_messages(browser) == []


def test_a_bad_file_shows_the_services_message(browser, server_url, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    browser.get(server_url + "/")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert browser.find_element(By.ID, "error").text.startswith("notes.png: not a recognised image format")
    assert browser.find_element(By.ID, "result").get_attribute("hidden") is not None
