"""The web page at `/` in a real browser: Debian's headless Chromium driven by Playwright, against a real server.

Nothing is downloaded: Playwright launches /usr/bin/chromium (`apt-get install chromium`), never a browser
build of its own. Screenshots go to each test's tmp_path.
"""

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image

from schemas.labels import CLASSES
from service.app import create_app
from service.settings import Settings
from tests.images import face_bytes
from training.__main__ import main as training_main

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')")

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                # A generated test pattern stands in for a camera, and camera permission is granted without a prompt.
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
WAIT_MS = 10_000  # page work and one small model call, on 2 shared CPU cores
FILTERS_WAIT_MS = 90_000  # gradient ascent for 16 filters the first time a layer is shown


@pytest.fixture(scope="module")
def reported_model_dir(model_dir, tmp_path_factory) -> Path:
    """The session's model with its report stored, as `make model` leaves a model directory."""
    copy = tmp_path_factory.mktemp("reported") / "model"
    shutil.copytree(model_dir, copy)
    assert training_main(["report", "--model", str(copy), "--data", "synthetic:350", "--steps", "4"]) == 0
    return copy


@pytest.fixture(scope="module")
def server_url(reported_model_dir):
    """A real uvicorn server in a thread, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(Settings(model_dir=reported_model_dir, device="cpu", batch_wait_ms=5))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page whose console errors, uncaught exceptions and requests outside the service are recorded."""

    def __init__(self, browser, server_url: str, width: int = 1100, height: int = 900):
        self.context = browser.new_context(viewport={"width": width, "height": height}, permissions=["camera"])
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("request", lambda request: None if request.url.startswith((server_url, "data:", "blob:"))
                     else self.outside.append(request.url))
        self.url = server_url

    def open(self, path: str = "/"):
        self.page.goto(self.url + path)
        if path == "/":
            self.page.wait_for_selector("#status.ok")  # /readyz answered: the model is loaded
        return self.page

    def assert_clean(self, expected_errors: tuple[str, ...] = ()):
        unexpected = [e for e in self.errors if not any(expected in e for expected in expected_errors)]
        assert not unexpected, f"console errors: {unexpected}"
        assert not self.outside, f"requests outside the service: {self.outside}"


@pytest.fixture
def watched(browser, server_url):
    watched = Watched(browser, server_url)
    yield watched
    watched.context.close()


def composite_photo() -> bytes:
    """A real face (scikit-image's astronaut) pasted on a 320x240 coloured background: a photo larger than the
    model's input, with a face the detector finds."""
    from skimage.data import astronaut

    picture = Image.new("RGB", (320, 240), (96, 140, 176))
    picture.paste(Image.fromarray(astronaut()[20:260, 130:370]).resize((120, 120)), (170, 60))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def upload(name: str, data: bytes, mime: str) -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def api_faces(server_url: str, name: str, data: bytes) -> list[dict]:
    """The boxes /predict gives for one file, in the page's terms (today's whole-image answer is one box)."""
    prediction = httpx.post(f"{server_url}/predict?faces=auto", files={"files": (name, data)}).json()["predictions"][0]
    if "faces" in prediction:
        return [f["box"] for f in prediction["faces"]]
    width, height = Image.open(io.BytesIO(data)).size
    return [{"x": 0, "y": 0, "width": width, "height": height}]


def card(page, filename: str):
    return page.locator("article.result", has=page.locator("h2.filename", has_text=filename))


def test_photos_show_face_boxes_probabilities_and_saliency(watched, server_url, tmp_path):
    page = watched.open()
    photos = {"face.png": (face_bytes("happy", seed=1, size=96), "image/png"),
              "composite.jpg": (composite_photo(), "image/jpeg")}
    page.set_input_files("#file-input", [upload(name, data, mime) for name, (data, mime) in photos.items()])
    for name, (data, _) in photos.items():
        result = card(page, name)
        result.locator(".overlay").wait_for(state="visible")
        overlay_width = result.locator(".overlay").evaluate("image => image.naturalWidth")
        assert overlay_width > 0
        width, height = Image.open(io.BytesIO(data)).size
        assert result.locator("svg.boxes").get_attribute("viewBox") == f"0 0 {width} {height}"
        drawn = [{key: float(rect.get_attribute(key)) for key in ("x", "y", "width", "height")}
                 for rect in result.locator("rect.box").all()]
        assert drawn == [{key: float(value) for key, value in box.items()}
                         for box in api_faces(server_url, name, data)]
        faces = result.locator("section.face")
        assert faces.count() == len(drawn) >= 1
        for i in range(faces.count()):
            bars = faces.nth(i).locator(".bar-row")
            assert bars.locator(".bar-name").all_text_contents() == list(CLASSES)
            shares = [float(text.rstrip("%")) for text in bars.locator(".bar-value").all_text_contents()]
            assert sum(shares) == pytest.approx(100, abs=0.5)
            assert bars.locator(".bar-fill").first.evaluate("bar => bar.style.width").endswith("%")
        assert "face" in result.locator(".message").text_content().lower()
        assert result.locator(".original").get_attribute("alt")
        assert result.locator(".overlay").get_attribute("alt").startswith("Saliency map")
    page.screenshot(path=tmp_path / "photos.png", full_page=True)

    # Another method and class: every photo's saliency map is computed again and says what it explains.
    page.select_option("#method", "gradcam")
    page.select_option("#target", "surprise")
    for name in photos:
        caption = card(page, name).locator(".saliency-caption")
        sync_api.expect(caption).to_contain_text("Grad-CAM")
        sync_api.expect(caption).to_contain_text("surprise")
    page.screenshot(path=tmp_path / "gradcam.png", full_page=True)
    watched.assert_clean()


def test_a_file_that_is_not_an_image_is_explained_in_words(watched, tmp_path):
    page = watched.open()
    page.set_input_files("#file-input", [upload("notes.txt", b"shopping: eggs, milk\n", "text/plain")])
    message = card(page, "notes.txt").locator(".message")
    sync_api.expect(message).to_contain_text("notes.txt: not an image")
    assert card(page, "notes.txt").get_attribute("class").split() == ["result", "failed"]
    assert card(page, "notes.txt").locator(".panes").is_hidden()
    page.screenshot(path=tmp_path / "error.png")
    # The browser itself logs the 400 of the rejected upload; nothing else may be logged.
    watched.assert_clean(expected_errors=("status of 400",))


def test_camera_snapshot_is_analysed(watched):
    page = watched.open()
    page.click("#camera-open")
    page.wait_for_function("document.getElementById('camera-video').readyState >= 2")
    page.click("#camera-snap")
    result = card(page, "camera-1.png")
    sync_api.expect(result.locator(".message")).not_to_have_text("Looking for faces…")
    assert "failed" not in result.get_attribute("class")  # a PNG from the camera is a valid image
    page.click("#camera-close")
    assert page.locator("#camera").is_hidden()
    assert page.evaluate("[...document.getElementById('camera-video').srcObject.getTracks()]"
                         ".every(track => track.readyState === 'ended')")  # the camera is released
    watched.assert_clean()


def test_video_view_plays_the_clip_with_its_tracks_and_timelines(watched, server_url, tmp_path):
    """A WebM clip (VP9, which Chromium plays) of two people: the boxes drawn over the playing video are /video's for
    the frame shown, captioned with track and smoothed label, and each person gets a timeline."""
    from bench import videos

    clip = videos.encode(videos.two_faces(), 2.0, container="webm", codec="libvpx-vp9")
    page = watched.open("/#video")
    page.wait_for_selector("#status.ok")
    page.set_input_files("#video-input", [upload("two.webm", clip, "video/webm")])
    sync_api.expect(page.locator("#video-status")).to_contain_text("2 people in 10 frames analysed",
                                                                   timeout=60_000)
    assert page.locator(".timeline").count() == 2
    assert page.locator(".timeline h3").first.text_content().startswith("Person #1: mostly ")
    assert page.locator(".timeline").first.locator("rect.timeline-step").count() == 10
    answer = httpx.post(f"{server_url}/video", files={"file": ("two.webm", clip, "video/webm")}, timeout=60).json()
    page.evaluate("document.getElementById('video-playback').currentTime = 1.0")
    page.wait_for_function("document.getElementById('video-playback').readyState >= 2 && "
                           "document.querySelectorAll('#video-boxes rect.box').length === 2")
    frame = next(frame for frame in answer["frames"] if frame["time_s"] == 1.0)
    drawn = sorted(({key: float(rect.get_attribute(key)) for key in ("x", "y", "width", "height")}
                    for rect in page.locator("#video-boxes rect.box").all()), key=lambda box: box["x"])
    assert drawn == sorted(({key: float(value) for key, value in face["box"].items()} for face in frame["faces"]),
                           key=lambda box: box["x"])
    captions = sorted(page.locator("#video-boxes text.box-label").all_text_contents())
    assert captions == sorted(f"#{face['track_id']} {face['smoothed_label']}" for face in frame["faces"])
    page.screenshot(path=tmp_path / "video.png", full_page=True)
    watched.assert_clean()


def test_live_camera_shows_smoothed_labels(watched):
    page = watched.open("/#video")
    page.click("#live-open")
    page.wait_for_function("document.getElementById('live-video').readyState >= 2")
    # Chromium's fake camera shows a test pattern, no face: the live view says so, frame after frame
    sync_api.expect(page.locator("#live-status")).to_have_text("No face in view.")
    page.click("#live-close")
    assert page.locator("#live").is_hidden()
    assert page.evaluate("[...document.getElementById('live-video').srcObject.getTracks()]"
                         ".every(track => track.readyState === 'ended')")
    watched.assert_clean()


def test_filters_view_shows_progress_then_serves_from_cache(watched, tmp_path):
    page = watched.open()
    # Record what the status line shows while the service computes, however briefly.
    page.evaluate("""() => {
        window.filterStatuses = [];
        const status = document.getElementById('filters-status');
        new MutationObserver(() => window.filterStatuses.push(status.className + ': ' + status.textContent))
            .observe(status, {childList: true, subtree: true, characterData: true, attributes: true});
    }""")
    page.focus("#tab-predict")
    page.keyboard.press("ArrowRight")  # the tabs work from the keyboard: Photos, Video, Filters
    assert page.locator("#tab-video").get_attribute("aria-selected") == "true"
    page.keyboard.press("ArrowRight")
    assert page.locator("#tab-filters").get_attribute("aria-selected") == "true"
    page.locator("#layer option").first.wait_for(state="attached", timeout=FILTERS_WAIT_MS)  # GET /filters answered
    layers = [option.get_attribute("value") for option in page.locator("#layer option").all()]
    assert layers[0] == "conv1" and "layer4.1.conv2" in layers
    page.locator("#filters-image").wait_for(state="visible", timeout=FILTERS_WAIT_MS)
    statuses = page.evaluate("window.filterStatuses")
    assert any(s.startswith("status busy: Computing") for s in statuses), statuses
    sync_api.expect(page.locator("#filters-status")).to_contain_text("Computed in")
    assert page.locator("#filters-image").evaluate("image => image.naturalWidth") > 0
    assert "conv1" in page.locator("#filters-image").get_attribute("alt")
    page.screenshot(path=tmp_path / "filters.png", full_page=True)

    page.check("#weights")  # conv1's raw kernels: no gradient ascent
    sync_api.expect(page.locator("#filters-caption")).to_contain_text("raw kernels")

    # A fresh page asks the service again: the visualisation now comes from its cache, at once.
    page.reload()  # at /#filters
    sync_api.expect(page.locator("#filters-status")).to_have_text("From the service's cache.")
    assert page.locator("#filters-image").is_visible()
    watched.assert_clean()


def test_model_view_shows_the_stored_report(watched, server_url, tmp_path):
    """The model view is the page `python -m training report` stored: the same sections, numbers and checks."""
    report = httpx.get(f"{server_url}/model").json()
    page = watched.open()
    page.click("#tab-model")
    page.locator("#model-report").wait_for(state="visible")
    frame = page.frame_locator("#model-report")
    sync_api.expect(frame.locator("h2")).to_have_text(
        ["The model", "Q1. The architecture", "Q2. Training history", "Q3. Confusion matrix", "Q4. Saliency maps",
         "Q5. What the filters respond to", "Derivations, checked on the network"])
    accuracy = report["manifest"]["validation"]["accuracy"]
    sync_api.expect(frame.locator("#s0")).to_contain_text(f"Accuracy {accuracy:.2%}")
    sync_api.expect(frame.locator("#s6 h3")).to_contain_text(["passes", "passes", "passes"])
    assert frame.locator("img").count() >= 5
    page.screenshot(path=tmp_path / "model.png", full_page=True)
    watched.assert_clean()


def test_page_fits_a_phone_screen(browser, server_url, tmp_path):
    watched = Watched(browser, server_url, width=390, height=844)
    try:
        page = watched.open()
        page.set_input_files("#file-input", [upload("face.png", face_bytes("sad", seed=2), "image/png")])
        card(page, "face.png").locator(".overlay").wait_for(state="visible")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off sideways
        page.screenshot(path=tmp_path / "phone.png", full_page=True)
        watched.assert_clean()
    finally:
        watched.context.close()


def test_api_docs_work_offline(watched, tmp_path):
    page = watched.open("/docs")
    page.locator(".opblock").first.wait_for()
    paths = page.locator(".opblock-summary-path").all_text_contents()
    assert {"/predict", "/saliency", "/filters/{layer}", "/model"} <= {p.replace("\u200b", "") for p in paths}
    page.screenshot(path=tmp_path / "docs.png")
    watched.assert_clean()
