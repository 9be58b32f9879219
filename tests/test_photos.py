"""Real photos through the service: faces found, boxes in the upload's upright pixels, one prediction and one
map per face, and clear answers for images with no face, too many faces, EXIF rotation and odd sizes."""

import io

import numpy as np
import pytest
from PIL import Image

from .conftest import make_client
from .images import face_bytes, upload

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the dev extra) ships the sample photos")


def jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92, **options)
    return buffer.getvalue()


ASTRONAUT = skimage_data.astronaut()  # 512 x 512, one smiling face near the top centre


@pytest.fixture(scope="module")
def photo_client(model_dir):
    with make_client(model_dir, max_faces_per_image=4, batch_wait_ms=5) as client:
        yield client


def faces_of(client, data: bytes, mode: str = "detect") -> dict:
    response = client.post(f"/predict?faces={mode}", files=upload(data, names=["photo.jpg"]))
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_the_astronauts_face_is_found_where_it_is(photo_client):
    image = faces_of(photo_client, jpeg(ASTRONAUT))
    assert (image["width"], image["height"]) == (512, 512) and len(image["faces"]) == 1
    face = image["faces"][0]
    box = face["box"]
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert 200 < centre[0] < 280 and 60 < centre[1] < 160 and 60 < box["width"] < 200, box
    assert face["source"] == "detector" and 0.5 < face["detection_score"] <= 1
    assert abs(sum(face["probabilities"].values()) - 1) < 1e-4


def test_boxes_are_in_the_upright_images_pixels_whatever_the_exif_rotation(photo_client):
    upright = faces_of(photo_client, jpeg(ASTRONAUT))["faces"][0]["box"]
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels must be turned 90 degrees clockwise to be upright
    stored = np.ascontiguousarray(np.rot90(ASTRONAUT, k=1))  # turned counter-clockwise, as a camera stores it
    turned = faces_of(photo_client, jpeg(stored, exif=exif))
    assert (turned["width"], turned["height"]) == (512, 512)
    box = turned["faces"][0]["box"]
    assert all(abs(box[key] - upright[key]) <= 12 for key in upright), (box, upright)


def test_a_large_panorama_is_searched_at_reduced_size_with_boxes_in_full_size(photo_client):
    panorama = np.full((1024, 6144, 3), 90, dtype=np.uint8)
    panorama[256:768, 4096:4608] = ASTRONAUT
    image = faces_of(photo_client, jpeg(panorama))
    assert (image["width"], image["height"]) == (6144, 1024) and len(image["faces"]) == 1
    box = image["faces"][0]["box"]
    assert 4096 + 180 < box["x"] + box["width"] / 2 < 4096 + 330 and 256 + 50 < box["y"] + box["height"] / 2 < 256 + 170


def test_an_image_without_a_face_says_so(photo_client):
    image = faces_of(photo_client, jpeg(skimage_data.coffee()), mode="auto")  # 600x400: too large to be a crop
    assert image["faces"] == [] and "no face" in image["reason"]


def test_auto_takes_a_small_square_image_whole_and_detect_does_not(photo_client):
    ramp = np.tile(np.linspace(60, 200, 64, dtype=np.uint8), (64, 1))  # small, square, no face in it
    crop = jpeg(np.repeat(ramp[..., None], 3, axis=2))
    auto = faces_of(photo_client, crop, mode="auto")
    assert [f["source"] for f in auto["faces"]] == ["whole_image"]
    assert auto["faces"][0]["box"] == {"x": 0, "y": 0, "width": 64, "height": 64}
    detect = faces_of(photo_client, crop, mode="detect")
    assert detect["faces"] == [] and detect["reason"]
    one_pixel = faces_of(photo_client, jpeg(np.zeros((1, 1, 3), dtype=np.uint8)), mode="auto")
    assert one_pixel["faces"][0]["source"] == "whole_image"


def test_a_face_crop_under_auto_never_reaches_the_detector(photo_client, monkeypatch):
    detector = photo_client.app.state.plane.model.detector
    seen = []
    original = detector.detect

    def spy(images, *args, **kwargs):
        seen.extend(image.shape for image in images)
        return original(images, *args, **kwargs)

    monkeypatch.setattr(detector, "detect", spy)
    astronaut_crop = jpeg(np.asarray(Image.fromarray(ASTRONAUT[20:260, 130:370]).resize((200, 200))))
    for crop in (face_bytes("happy"), astronaut_crop):  # 48x48, and a 200x200 face the detector would find
        assert [f["source"] for f in faces_of(photo_client, crop, mode="auto")["faces"]] == ["whole_image"]
    assert seen == []
    assert faces_of(photo_client, astronaut_crop, mode="detect")["faces"][0]["source"] == "detector"
    assert faces_of(photo_client, jpeg(ASTRONAUT), mode="auto")["faces"][0]["source"] == "detector"  # 512x512
    assert len(seen) == 2


def test_many_faces_are_truncated_to_the_limit_and_the_response_says_so(photo_client):
    crop = np.asarray(Image.fromarray(ASTRONAUT[20:260, 130:370]).resize((200, 200)))
    group = np.full((600, 1000, 3), 200, dtype=np.uint8)
    for row in range(3):
        for column in range(5):
            group[row * 200:(row + 1) * 200, column * 200:(column + 1) * 200] = crop
    image = faces_of(photo_client, jpeg(group))
    assert len(image["faces"]) == 4 and image["faces_truncated"] is True


def test_faces_of_several_images_are_predicted_in_one_batch(photo_client):
    response = photo_client.post("/predict?faces=auto", files=upload(jpeg(ASTRONAUT), face_bytes("sad"),
                                                                     jpeg(skimage_data.coffee())))
    images = response.json()["predictions"]
    assert [len(image["faces"]) for image in images] == [1, 1, 0]


def test_overlays_are_drawn_at_the_photos_own_size_or_say_their_scale(photo_client, model_dir):
    wide = jpeg(np.asarray(Image.fromarray(ASTRONAUT).resize((1280, 886))))  # the size the photo had
    response = photo_client.post("/saliency?format=overlay", files=upload(wide))
    assert Image.open(io.BytesIO(response.content)).size == (1280, 886)
    assert (response.headers["x-overlay-left"], response.headers["x-overlay-scale"]) == ("0", "1")
    two = photo_client.post("/saliency?format=overlay", files=upload(wide, face_bytes("sad")))
    lefts = [int(v) for v in two.headers["x-overlay-left"].split(",")]
    scales = [float(v) for v in two.headers["x-overlay-scale"].split(",")]
    assert lefts[0] == 0 and lefts[1] > 1200 and scales[0] == pytest.approx(1, abs=0.01)  # at a common height
    assert scales[1] == pytest.approx(886 / 48, rel=0.01)  # the 48x48 crop enlarged to the photo's height
    with make_client(model_dir, max_png_pixels=500_000) as capped:
        small = capped.post("/saliency?format=overlay", files=upload(wide))
        scale = float(small.headers["x-overlay-scale"])
        assert Image.open(io.BytesIO(small.content)).size == (round(1280 * scale), round(886 * scale))
        assert scale == pytest.approx((500_000 / (1280 * 886)) ** 0.5, rel=0.01)


def test_saliency_overlay_on_a_photo_and_json_per_face(photo_client):
    response = photo_client.post("/saliency?faces=detect&format=overlay&method=gradcam",
                                 files=upload(jpeg(ASTRONAUT)))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(response.content)))
    assert overlay.shape == (512, 512, 3)
    assert not np.array_equal(overlay, ASTRONAUT)  # the map and the box are drawn on it
    body = photo_client.post("/saliency?faces=detect&format=json", files=upload(jpeg(ASTRONAUT))).json()
    face = body["images"][0]["faces"][0]
    assert np.array(face["saliency"]).shape == (32, 32) and face["box"]["width"] > 60
    nothing = photo_client.post("/saliency?faces=detect&format=json", files=upload(jpeg(skimage_data.coffee())))
    assert nothing.status_code == 200 and nothing.json()["images"][0]["faces"] == []
    assert photo_client.post("/saliency?faces=detect&format=png",
                             files=upload(jpeg(skimage_data.coffee()))).status_code == 422


def test_detection_metrics_are_recorded(photo_client):
    faces_of(photo_client, jpeg(ASTRONAUT))
    text = photo_client.get("/metrics").text
    registry = photo_client.app.state.plane.metrics.registry
    for name in ("fer_faces_per_image_count", "fer_face_detection_batch_seconds_count", "fer_detection_batch_size_count",
                 "fer_detection_queue_wait_seconds_count"):
        assert registry.get_sample_value(name) > 0, name
    assert "fer_detection_queue_depth" in text


def test_each_face_gets_one_answer_from_predict_saliency_and_v2(photo_client):
    photos = [jpeg(ASTRONAUT), face_bytes("sad"), face_bytes("happy", seed=3)]
    predicted = photo_client.post("/predict", files=upload(*photos)).json()["predictions"]
    faces = [face for image in predicted for face in image["faces"]]
    assert len(faces) == 3 and faces[0]["source"] == "detector"
    for method in ("vanilla", "gradcam"):
        explained = photo_client.post(f"/saliency?format=json&method={method}", files=upload(*photos)).json()
        maps = [face for image in explained["images"] for face in image["faces"]]
        for face, mapped in zip(faces, maps):
            assert mapped["predicted"] == mapped["target"] == face["label"] and mapped["box"] == face["box"]
            for name, probability in face["probabilities"].items():
                assert abs(mapped["probabilities"][name] - probability) < 1e-5
    overlay = photo_client.post("/saliency?format=overlay", files=upload(*photos))
    assert overlay.headers["x-predicted"].split(",") == [face["label"] for face in faces]
    # v2 takes each image whole: the crops' answers are /predict's with faces=none
    whole = photo_client.post("/predict?faces=none", files=upload(*photos[1:])).json()["predictions"]
    import base64

    inputs = [{"name": "images", "datatype": "BYTES", "shape": [2], "data": [base64.b64encode(p).decode()
                                                                           for p in photos[1:]]}]
    for model in ("fer-resnet18", "fer-resnet18-saliency"):
        answer = photo_client.post(f"/v2/models/{model}/infer", json={"inputs": inputs}).json()
        probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")["data"]
        for i, image in enumerate(whole):
            expected = list(image["faces"][0]["probabilities"].values())
            assert max(abs(a - b) for a, b in zip(probabilities[i * 7:(i + 1) * 7], expected)) < 1e-5
