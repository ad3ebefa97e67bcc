"""The playground page (client-ts/playground) in a real browser, against the tiny stack.

Headless Chromium, Debian's `chromium` driven through its `chromedriver` by Selenium,
loads the page from the in-process orchestrator's HTTP port (the same origin the page
calls), is refused with the field named when it runs without a mark, then uploads a
photo, clicks the object on it and removes it: the masks arrive, the progress bar moves
with every Progress event, and the result has the photo's size. A screenshot of the
finished page goes to the test's tmp_path and to docs/playground.png (the README shows
it).

Selenium rather than Playwright: it drives the distribution's own browser through the
distribution's own driver, a small pure-Python package; Playwright's package carries a
Node.js driver of its own and expects its own browser builds. Selenium is blocking, so it
runs in a thread while this event loop keeps serving the stack. When Chromium or its
driver is missing this test fails, saying how to install them; it never skips.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.asyncio(loop_scope="package")

REPO = Path(__file__).resolve().parents[2]
CLIENT_TS = REPO / "client-ts"
BUILD = CLIENT_TS / "scripts" / "build-playground.mjs"
SCREENSHOT = REPO / "docs" / "playground.png"
INSTALL_HINT = ("install Debian's Chromium and its driver: `apt-get install -y chromium "
                "chromium-driver` (./scripts/test does it: scripts/setup.sh with "
                "MIC2E_SETUP_TEST_TOOLS=1)")
SETUP_HINT = "run `bash scripts/setup-ts.sh` (npm ci, then the playground build)"
W, H = 160, 120
OBJECT = (104, 58)  # the middle of the disc in the photo: where the test clicks
STEPS = 4
WAIT_S = 90


def photo() -> bytes:
    """A W x H PNG: sky over grass, and a red ball with its shadow to remove."""
    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    for y in range(H):
        sky = y < 70
        draw.line([(0, y), (W, y)], fill=(120 + y, 170 + y // 2, 235) if sky
                  else (60, 140 - (y - 70), 50))
    x, y = OBJECT
    draw.ellipse([x - 14, 84, x + 26, 94], fill=(40, 90, 35))  # shadow on the grass
    draw.ellipse([x - 20, y - 20, x + 20, y + 20], fill=(205, 40, 40))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def build_page() -> None:
    """Bundles the page afresh (esbuild, under a second), so the browser never runs an
    older bundle than its source; the files are read at each request."""
    node = shutil.which("node")
    if node is None or not (CLIENT_TS / "node_modules" / "esbuild").is_dir():
        pytest.fail(f"Node.js or client-ts/node_modules/esbuild is missing; {SETUP_HINT}")
    proc = await asyncio.create_subprocess_exec(
        node, str(BUILD), cwd=CLIENT_TS, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"the playground build failed:\n{out.decode(errors='replace')}"


def served(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def drive(url: str, picture: Path, screenshot: Path, chromium: str, driver: str) -> dict:
    """The browser's part (blocking): runs the page, returns what the checks read."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: Chromium's sandbox refuses to run as root, as the test command does.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        browser.set_page_load_timeout(WAIT_S)
        browser.get(url)
        script = browser.execute_script

        def state() -> str:
            return script("return document.body.dataset.state")

        wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.1)
        browser.find_element(By.ID, "file").send_keys(str(picture))
        wait.until(lambda _: script("return document.getElementById('photo').naturalWidth"))
        browser.find_element(By.ID, "options").click()  # open the options to set them
        browser.find_element(By.ID, "steps").send_keys(str(STEPS))
        browser.find_element(By.ID, "seed").send_keys("7")

        # No point clicked yet: the server refuses, naming the field.
        browser.find_element(By.ID, "run").click()
        wait.until(lambda _: state() in ("error", "done"))
        refused = {"state": state(),
                   "fields": script("return [...document.querySelectorAll('#violations li')]"
                                    ".map(li => li.dataset.field)"),
                   "message": browser.find_element(By.ID, "error-message").text}

        # Click the ball, at its place in the photo whatever size the page shows it.
        overlay = browser.find_element(By.ID, "overlay")
        rect = overlay.rect
        dx = (OBJECT[0] + 0.5) / W * rect["width"] - rect["width"] / 2
        dy = (OBJECT[1] + 0.5) / H * rect["height"] - rect["height"] / 2
        ActionChains(browser).move_to_element_with_offset(overlay, round(dx), round(dy)) \
            .click().perform()
        browser.find_element(By.ID, "run").click()
        wait.until(lambda _: state() in ("error", "done"))
        result = script("""
            const img = document.getElementById('result');
            const link = document.getElementById('download');
            return {
              state: document.body.dataset.state,
              error: document.getElementById('error').innerText,
              width: img.naturalWidth, height: img.naturalHeight,
              progress: document.getElementById('progress').dataset.values,
              masks: document.body.dataset.masks,
              href: link.href, download: link.download,
              outputShown: !document.getElementById('output').hidden,
            };""")
        browser.save_screenshot(str(screenshot))
        return {"refused": refused, **result}
    finally:
        browser.quit()


async def test_playground_removes_a_clicked_object(stack, tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(f"Chromium (`chromium`) or its driver (`chromedriver`) is not on PATH; "
                    f"{INSTALL_HINT}")
    await build_page()
    url = stack.http_url() + "/"
    status = await asyncio.to_thread(served, url)
    if status != 200:
        pytest.fail(f"GET {url} answered {status}: the orchestrator serves the playground "
                    f"only when client-ts/dist/playground/index.html exists as it starts; "
                    f"{SETUP_HINT}")
    picture = tmp_path / "photo.png"
    picture.write_bytes(photo())
    shot = tmp_path / "playground.png"

    seen = await asyncio.to_thread(drive, url, picture, shot, chromium, driver)

    refused = seen["refused"]
    assert refused["state"] == "error", refused
    assert refused["fields"] == ["target"], refused
    assert refused["message"].startswith("InvalidArgument"), refused

    assert seen["state"] == "done", f"the page ended in {seen['state']}: {seen['error']}"
    assert int(seen["masks"]) >= 1, "the segmentation's masks were drawn"
    assert (seen["width"], seen["height"]) == (W, H), "the result has the photo's size"
    assert seen["outputShown"] and seen["href"].startswith("blob:"), seen
    assert seen["download"] == "mic2e-remove.png"
    # The bar moved with each event: up from 0 through the segmentation's share, then a
    # step at a time (STEPS of them), to full; never back.
    values = [float(v) for v in seen["progress"].split(",")]
    assert values == sorted(values), values
    assert values[0] == 0 and values[-1] == 1, values
    assert len(set(values) - {0}) >= STEPS + 1, f"the bar moved {values}"

    assert shot.stat().st_size > 0
    SCREENSHOT.parent.mkdir(exist_ok=True)
    if not SCREENSHOT.is_file() or SCREENSHOT.read_bytes() != shot.read_bytes():
        shutil.copyfile(shot, SCREENSHOT)
