"""The web app in a real browser: ``openseg-r serve web`` as a user starts it (the tiny CLIP
from files, the scripted LMM, a runs database), driven by Playwright in the system's
Chromium (no browser download). The four things a person does on the page:

1. upload the VOC photo, name classes, and watch every node appear and the overlay render;
2. answer the human self-check's two questions by clicking, and get the labels
   ``OpenSegR.answer()`` gives for the same answers;
3. upload a truncated image: one line in the page, and the next run works;
4. run the shipped example, open its recorded report, and compare it with the bare-name baseline.

With ``OPENSEG_R_SCREENSHOTS=docs/images`` the README's screenshots are written too.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from loopback import free_port, wait_until_listening
from PIL import Image

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]
SELF_CHECK = {"margin_threshold": 0.5, "rounds": 1, "top_k": 2}  # the server's --self-check-* flags below
ALL_NODES = [
    "generic_reasoning",
    "image_reasoning",
    "class_alignment",
    "prompt_composition",
    "segmentation",
    "finalize",
]
VOC_CLASSES = "person, chair, diningtable, bottle, background"
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_files):
    """The page, served by the real command, on a free loopback port."""
    folder = tmp_path_factory.mktemp("web")
    config, weights = tiny_model_files
    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(folder / "gradio"),
        XDG_CACHE_HOME=str(folder / "cache"),
        XDG_DATA_HOME=str(folder / "data"),
        XDG_CONFIG_HOME=str(folder / "config"),
        PYTHONWARNINGS="ignore",
    )
    command = [
        sys.executable,
        "-m",
        "openseg_r.cli",
        "serve",
        "web",
        "--port",
        str(port),
        "--clip-model",
        str(config),
        "--clip-pretrained",
        str(weights),
        "--lmm",
        f"scripted:{SCRIPT}",
        "--runs-db",
        str(folder / "runs.sqlite"),
        "--self-check-margin",
        str(SELF_CHECK["margin_threshold"]),
        "--self-check-rounds",
        str(SELF_CHECK["rounds"]),
        "--self-check-k",
        str(SELF_CHECK["top_k"]),
    ]
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        try:
            wait_until_listening(process, port, "the web app")
        except BaseException:
            print((folder / "server.log").read_text())  # why it did not start
            raise
        yield {"url": f"http://127.0.0.1:{port}/", "folder": folder, "log": folder / "server.log"}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class Page:
    """A tab on the app that keeps what a user would not see: console errors, uncaught
    exceptions, and any request that leaves this machine."""

    def __init__(self, browser, server) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "request",
            lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else self.outside.append(r.url),
        )
        self.page.goto(server["url"])
        self.page.locator("#run").wait_for()

    def upload(self, path: Path) -> None:
        self.page.locator("#image input[type=file]").set_input_files(str(path))
        self.page.locator("#image img").first.wait_for(timeout=TIMEOUT_MS)  # the preview: the upload landed

    def segment(self, classes: str, *, self_check: str = "off", reasoning: bool = True) -> None:
        self.page.locator("#classes textarea").fill(classes)
        self.page.locator("#self-check").get_by_label(self_check, exact=True).check()
        box = self.page.locator("#reasoning input")
        box.check() if reasoning else box.uncheck()
        self.page.locator("#run").click()

    def wait_for(self, state: str) -> str:
        """The status line once the run is done / paused, or the error line; its text."""
        line = self.page.locator(f"#status [data-state={state}], #status .openseg-error").first
        line.wait_for(timeout=TIMEOUT_MS)
        return line.inner_text().strip()

    def images_decoded(self, selector: str) -> bool:
        """The first matching image loads and decodes (waited for: on a loaded machine it may
        still be loading when the element appears); False if it cannot be decoded."""
        script = "img => img.decode().then(() => img.naturalWidth > 0, () => false)"
        return self.page.locator(selector).first.evaluate(script)

    def download(self, name: str) -> bytes:
        link = self.page.locator(f"#downloads a[href*='{name}']").first
        link.wait_for(timeout=TIMEOUT_MS)
        return self.page.request.get(link.get_attribute("href")).body()

    def screenshot(self, name: str) -> None:
        save_screenshot(self.page, name)

    def close(self) -> None:
        self.page.close()
        assert self.errors == [], self.errors  # the console stayed clean
        assert self.outside == [], self.outside  # nothing was fetched from outside this machine


SCREENSHOT_WIDTH = 1100  # the README's pictures: scaled down and in 256 colours, to keep the repository small


def save_screenshot(tab, name: str) -> None:
    """With OPENSEG_R_SCREENSHOTS set, the whole page as a PNG in that folder (for the README)."""
    folder = os.environ.get("OPENSEG_R_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    picture = Image.open(io.BytesIO(tab.screenshot(full_page=True))).convert("RGB")
    if picture.width > SCREENSHOT_WIDTH:
        picture = picture.resize(
            (SCREENSHOT_WIDTH, round(picture.height * SCREENSHOT_WIDTH / picture.width)), Image.Resampling.LANCZOS
        )
    picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(Path(folder) / name, optimize=True)


@pytest.fixture
def page(browser, server):
    tab = Page(browser, server)
    yield tab
    tab.close()


def test_upload_name_classes_and_watch_every_node(page):
    # every state of the trace the page showed while the run went on
    page.page.evaluate("""() => { window.traceStates = [];
        new MutationObserver(() => { const nodes = document.querySelectorAll('#trace li.node');
            window.traceStates.push(Array.from(nodes).map(n => n.dataset.node + ':' + n.dataset.status).join(' '));
        }).observe(document.body, {subtree: true, childList: true, attributes: true}); }""")
    page.upload(PHOTO)
    page.segment(VOC_CLASSES)
    status = page.wait_for("done")
    assert status.startswith("done:"), status
    trace = page.page.locator("#trace")
    for node in ALL_NODES:
        assert trace.locator(f"li.node[data-node={node}][data-status=done]").count() >= 1, node
    assert trace.locator("li.node[data-status=running]").count() == 0
    states = page.page.evaluate("window.traceStates")
    assert any(":running" in state for state in states)  # nodes were shown while they ran, not only at the end
    text = trace.inner_text()
    assert "cafeteria" in text  # the image description, from the scripted answers
    assert "dining table" in text and "diningtable" in text  # an alignment decision
    assert "chair that has" in text  # a composed prompt
    assert page.images_decoded("#overlay img")
    legend = page.page.locator("#legend tr[data-class]")
    names = [legend.nth(i).get_attribute("data-class") for i in range(legend.count())]
    assert names and set(names) <= {name.strip() for name in VOC_CLASSES.split(",")}
    labels = np.array(Image.open(io.BytesIO(page.download("labels.png"))))
    assert labels.shape == (375, 500)
    assert page.page.locator("#downloads a[href*='masks_coco_rle.json']").count() == 1
    page.screenshot("web-1-segment.png")


def test_human_self_check_answered_by_clicking_matches_answer(page, server, tiny_model_files):
    from openseg_r.model import OpenSegR

    classes = "person, chair, sofa, bottle"
    page.upload(PHOTO)
    page.segment(classes, self_check="human", reasoning=False)
    status = page.wait_for("paused")
    assert "2 region(s)" in status, status
    questions = page.page.locator("[id^=question-]")
    questions.nth(1).wait_for(timeout=TIMEOUT_MS)  # the questions render after the status says so
    assert questions.count() == 2
    assert page.images_decoded("[id^=question-] img")  # the marked crop
    page.screenshot("web-2-self-check.png")
    # answer the second question first: the runner-up class for it, then "none of these" for the other
    regions = [questions.nth(i).get_attribute("id").removeprefix("question-") for i in range(2)]
    chosen = {}
    second = page.page.locator(f"#question-{regions[1]}")
    chosen[regions[1]] = second.locator("button.choice").nth(1).inner_text().strip()
    second.locator("button.choice").nth(1).click()
    page.wait_for("paused")
    page.page.locator(f"#question-{regions[1]}").wait_for(state="detached", timeout=TIMEOUT_MS)
    first = page.page.locator(f"#question-{regions[0]}")
    chosen[regions[0]] = "none of these"
    first.get_by_role("button", name="none of these").click()
    assert page.wait_for("done").startswith("done:")
    clicked = np.array(Image.open(io.BytesIO(page.download("labels.png"))))

    config, weights = tiny_model_files
    model = OpenSegR(clip_model=str(config), clip_pretrained=str(weights))
    run = model.start(PHOTO, classes, reasoning=False, self_check={"enabled": True, "mode": "human", **SELF_CHECK})
    by_slug = {question["region_id"].replace(".", "-"): question["region_id"] for question in run.questions}
    assert sorted(by_slug) == sorted(regions)  # the same questions
    run.answer({by_slug[slug]: choice for slug, choice in chosen.items()})  # both at once, in Python
    assert run.result is not None
    expected = np.where(run.result.labels < 0, 255, run.result.labels)
    assert np.array_equal(clicked, expected)
    answers = {a.region_id: a for a in run.result.state.region_answers}
    assert answers[by_slug[regions[1]]].verdict == "class" and answers[by_slug[regions[0]]].verdict == "none_of_these"


def test_a_truncated_image_is_one_line_and_the_next_run_works(page, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(PHOTO.read_bytes()[:20_000])
    page.upload(truncated)
    page.segment("person, chair")
    error = page.page.locator("#status .openseg-error")
    error.wait_for(timeout=TIMEOUT_MS)
    line = error.inner_text().strip()
    assert "\n" not in line and line.startswith("image is corrupt or truncated"), line
    assert "Traceback" not in page.page.content()
    page.screenshot("web-3-error.png")
    page.upload(PHOTO)
    page.page.locator("#run").click()
    error.wait_for(state="detached", timeout=TIMEOUT_MS)  # the new run has begun
    assert page.wait_for("done").startswith("done:")
    assert page.page.locator("#status .openseg-error").count() == 0
    assert page.images_decoded("#overlay img")


def test_open_a_recorded_runs_report_and_compare_with_the_baseline(page):
    page.page.locator("#examples button").first.click()  # the shipped example, this time
    page.page.locator("#image img").first.wait_for(timeout=TIMEOUT_MS)
    page.segment(VOC_CLASSES)
    status = page.wait_for("done")
    assert "recorded as" in status, status
    run_prefix = status.split("recorded as")[1].strip()[:12]
    page.page.locator("#compare").click()  # this run beside its bare-name baseline
    page.page.locator("#comparison-table [data-section=comparison]").wait_for(timeout=TIMEOUT_MS)
    assert page.images_decoded("#compare-run img") and page.images_decoded("#compare-baseline img")
    page.screenshot("web-4-compare.png")

    page.page.get_by_role("tab", name="Recorded runs").click()
    row = page.page.locator(f"#recorded-runs tr[data-run^='{run_prefix}']")
    row.wait_for(timeout=TIMEOUT_MS)
    with page.page.expect_popup() as popup:
        row.locator("a[data-report]").click()
    report = popup.value
    report.wait_for_load_state("load")
    assert report.locator("body").get_attribute("data-images-ok") == "yes"  # every picture decoded
    assert run_prefix in report.title()
    assert report.locator("#alignment").count() == 1 and "diningtable" in report.locator("#alignment").inner_text()
    save_screenshot(report, "web-5-report.png")
    report.close()
