import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch.nn.functional as F
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from schemas.api import FiltersResponse, LayersResponse, ModelReport, PredictResponse, SaliencyResponse
from schemas.labels import CLASSES
from service.__main__ import main as service_main

from .conftest import make_client
from .images import face, face_bytes, upload

EXPRESSIONS = ["happy", "sad", "surprise", "angry", "fear", "disgust", "neutral"]


def metric_value(client, name: str, **labels) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# --- probes and model report -----------------------------------------------------------------------

def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["backend"] == "torchscript"


def test_model_report_serves_architecture_history_and_confusion(client):
    report = ModelReport.model_validate(client.get("/model").json())
    assert report.manifest.classes == list(CLASSES)
    conv1 = next(row for row in report.architecture if row.name == "conv1")
    assert conv1.parameters == 64 * 3 * 7 * 7 and conv1.output_shape == [64, 16, 16]  # the network sees 32x32
    assert report.architecture[-1].name == "fc.1" and report.architecture[-1].output_shape == [7]
    assert len(report.history) == 5 and len(report.confusion_matrix["counts"]) == 7


# --- predict ---------------------------------------------------------------------------------------

def test_predict_one_image(client):
    response = client.post("/predict?faces=none", files=upload(face_bytes("happy"), names=["a.png"]))
    assert response.status_code == 200
    body = PredictResponse.model_validate(response.json())
    image = body.predictions[0]
    assert image.filename == "a.png" and (image.width, image.height) == (48, 48) and len(image.faces) == 1
    prediction = image.faces[0]
    assert prediction.source == "whole_image" and prediction.box.model_dump() == {"x": 0, "y": 0, "width": 48,
                                                                                  "height": 48}
    assert prediction.label == CLASSES[prediction.index]
    assert list(prediction.probabilities) == list(CLASSES)
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-4
    assert prediction.confidence == max(prediction.probabilities.values())
    assert body.model.device == "cpu" and {"decode", "queue", "inference", "total"} <= set(body.timing_ms)


def test_predict_many_faces_in_any_format_size_and_colour(client):
    formats = [("PNG", 48, "L"), ("JPEG", 200, "RGB"), ("BMP", 64, "RGB"), ("GIF", 48, "L"), ("WEBP", 96, "RGB"),
               ("PNG", 300, "RGBA"), ("TIFF", 32, "L")]
    images = [face_bytes(expression, seed=3, fmt=fmt, size=size, mode=mode)
              for expression, (fmt, size, mode) in zip(EXPRESSIONS, formats)]
    # faces=none: the synthetic faces are drawings, and MTCNN scores the 300 px one 0.66, under FER_MIN_FACE_SCORE
    body = client.post("/predict?faces=none", files=upload(*images)).json()
    labels = [p["faces"][0]["label"] for p in body["predictions"]]
    assert len(labels) == 7
    assert sum(label == expected for label, expected in zip(labels, EXPRESSIONS)) >= 5, labels


def test_predict_json_base64_and_top_k(client):
    data = [base64.b64encode(face_bytes(e)).decode() for e in ("happy", "sad")]
    response = client.post("/predict?top_k=3", json={"images": data, "filenames": ["h.png", "s.png"]})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == ["h.png", "s.png"]
    top = predictions[0]["faces"][0]["top_k"]
    assert len(top) == 3 and top[0]["label"] == predictions[0]["faces"][0]["label"]
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    multipart = client.post("/predict", files=upload(face_bytes("happy"))).json()["predictions"][0]["faces"][0]
    assert multipart["probabilities"] == pytest.approx(predictions[0]["faces"][0]["probabilities"], abs=1e-6)


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answer(client):
    images = [face_bytes(EXPRESSIONS[i % 7], seed=i) for i in range(24)]
    alone = [client.post("/predict", files=upload(data)).json()["predictions"][0]["faces"][0]["probabilities"]
             for data in images]
    batches_before = metric_value(client, "fer_batch_size_count")
    singles_before = metric_value(client, "fer_batch_size_bucket", le="1.0")
    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(lambda data: client.post("/predict", files=upload(data)).json(), images))
    for expected, body in zip(alone, together):
        assert body["predictions"][0]["faces"][0]["probabilities"] == pytest.approx(expected, abs=1e-5)
    batches = metric_value(client, "fer_batch_size_count") - batches_before
    singles = metric_value(client, "fer_batch_size_bucket", le="1.0") - singles_before
    assert batches < len(images) and singles < batches, "no batch held more than one request"


def test_onnx_backend_gives_the_same_predictions(client, model_dir):
    images = upload(*[face_bytes(e, seed=5) for e in EXPRESSIONS])
    expected = client.post("/predict", files=images).json()["predictions"]
    with make_client(model_dir, backend="onnx") as onnx_client:
        body = onnx_client.post("/predict", files=images).json()
    assert body["model"]["backend"] == "onnx"
    for mine, theirs in zip(body["predictions"], expected):
        mine, theirs = mine["faces"][0], theirs["faces"][0]
        assert mine["label"] == theirs["label"]
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-4)


# --- saliency --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["vanilla", "smoothgrad", "gradcam"])
def test_saliency_json_for_each_method(client, method):
    response = client.post(f"/saliency?method={method}&format=json", files=upload(face_bytes("happy"), face_bytes("sad")))
    assert response.status_code == 200
    body = SaliencyResponse.model_validate(response.json())
    assert body.method == method and len(body.images) == 2 and len(body.images[0].faces) == 1
    values = np.array(body.images[0].faces[0].saliency)
    assert values.shape == (32, 32) and values.min() >= 0 and values.max() == pytest.approx(1, abs=1e-3)


def test_saliency_png_and_overlay(client):
    for fmt, channels in (("png", 3), ("overlay", 3)):
        response = client.post(f"/saliency?format={fmt}&scale=2", files=upload(face_bytes("happy"), face_bytes("sad")))
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        image = np.asarray(Image.open(io.BytesIO(response.content)))
        assert image.ndim == channels and image.shape[1] > image.shape[0]  # two tiles side by side
        assert len(response.headers["x-predicted"].split(",")) == 2


def test_an_overlay_over_the_png_limit_at_any_height_is_refused_before_any_work(client):
    """A photo 4.1 M pixels wide and 1 high is within the upload's pixel limit, but drawn side by side it cannot fit
    FER_MAX_PNG_PIXELS (4 M) even one pixel high: 422 naming the limit, not a picture over it."""
    buffer = io.BytesIO()
    Image.new("L", (4_100_000, 1), 128).save(buffer, format="PNG")
    for faces in ("detect", "none"):
        response = client.post(f"/saliency?format=overlay&faces={faces}", files=upload(buffer.getvalue()))
        assert response.status_code == 422, response.text[:300]
        assert "limit of 4000000" in response.json()["detail"] and "format=png or json" in response.json()["detail"]
    assert client.post("/saliency?format=json", files=upload(buffer.getvalue())).status_code == 200
    tall = io.BytesIO()  # one pixel wide: it fits once drawn a little shorter than it is
    Image.new("L", (1, 4_100_000), 128).save(tall, format="PNG")
    response = client.post("/saliency?format=overlay&faces=detect", files=upload(tall.getvalue()))
    assert response.status_code == 200, response.text[:300]
    width, height = Image.open(io.BytesIO(response.content)).size
    assert width == 1 and 3_900_000 < height <= 4_000_000


def test_saliency_for_a_requested_target(client):
    for target in ("surprise", "5"):
        body = client.post(f"/saliency?format=json&target={target}", files=upload(face_bytes("happy"))).json()
        face = body["images"][0]["faces"][0]
        assert face["target"] == "surprise" and face["target_index"] == 5


def test_saliency_looks_at_eyes_brows_and_mouth_not_the_background(client):
    """Most of the map's mass lies on the drawn features (widened a little), far more than on the background."""
    feature_mass = background_mass = 0.0
    feature_share = []
    for i, expression in enumerate(EXPRESSIONS * 2):
        image, features = face(expression, seed=100 + i)
        body = client.post("/saliency?format=json", files=upload(face_bytes(expression, seed=100 + i))).json()
        saliency = torch.tensor(body["images"][0]["faces"][0]["saliency"])[None, None]
        saliency = F.interpolate(saliency, size=(48, 48), mode="bilinear", align_corners=False)[0, 0].numpy()
        regions = F.max_pool2d(torch.tensor(features, dtype=torch.float32)[None, None], 7, 1, 3)[0, 0].numpy() > 0
        background = _background(image)
        feature_mass += saliency[regions].sum()
        background_mass += saliency[background & ~regions].sum()
        feature_share.append(saliency[regions].sum() / saliency.sum())
    assert feature_mass > 2 * background_mass
    assert np.mean(feature_share) > 0.5, feature_share


def _background(image: np.ndarray) -> np.ndarray:
    """Pixels outside the face: those whose grey level matches the corners'."""
    corners = np.concatenate([image[:3, :3].ravel(), image[:3, -3:].ravel(), image[-3:, :3].ravel(), image[-3:, -3:].ravel()])
    return np.abs(image.astype(float) - np.median(corners)) < 25


# --- filters -----------------------------------------------------------------------------------------

def test_filters_lists_layers_by_module_name(client):
    layers = LayersResponse.model_validate(client.get("/filters").json()).layers
    names = [layer.name for layer in layers]
    assert names[0] == "conv1" and names[-1] == "layer4.1.conv2" and "layer2.0.downsample.0" in names
    assert len(layers) == 20 and layers[0].filters == 64 and layers[-1].filters == 512


def test_filter_visualisation_is_cached_per_options(client):
    url = "/filters/layer2.0.conv1?filters=0-3&steps=8&format=json"
    hits = metric_value(client, "fer_filter_cache_hits_total")
    first = client.get(url)
    second = client.get(url)
    assert first.status_code == second.status_code == 200
    assert first.json()["cached"] is False and second.json()["cached"] is True
    assert first.json()["filters"] == second.json()["filters"]
    assert metric_value(client, "fer_filter_cache_hits_total") == hits + 1
    assert client.get("/filters/layer2.0.conv1?filters=0-3&steps=9&format=json").json()["cached"] is False
    body = FiltersResponse.model_validate(first.json())
    assert [f.filter for f in body.filters] == [0, 1, 2, 3] and np.array(body.filters[0].image).shape == (48, 48)


def test_filter_png_grid_and_conv1_weights(client):
    png = client.get("/filters/layer4.1.conv2?filters=0,5,9-10&steps=4&scale=1&columns=2")
    assert png.status_code == 200 and png.headers["x-filters"] == "0,5,9,10"
    assert np.asarray(Image.open(io.BytesIO(png.content))).shape == (48 * 2 + 2, 48 * 2 + 2)
    weights = client.get("/filters/conv1?mode=weights&filters=0-63&format=json").json()
    assert len(weights["filters"]) == 64 and np.array(weights["filters"][0]["image"]).shape == (7, 7)


def test_filter_ascent_raises_the_filters_activation(client):
    few = client.get("/filters/layer3.0.conv2?filters=0-3&steps=1&format=json").json()
    many = client.get("/filters/layer3.0.conv2?filters=0-3&steps=48&format=json").json()
    assert sum(f["activation"] for f in many["filters"]) > sum(f["activation"] for f in few["filters"])


@pytest.mark.parametrize("url, status, message", [
    ("/filters/layer9.conv1", 404, "valid layers: conv1, layer1.0.conv1"),
    ("/filters/layer9.conv1?filters=a", 404, "unknown layer"),
    ("/filters/conv1?filters=60-64", 422, "filter index 64 out of range: conv1 has filters 0-63"),
    ("/filters/conv1?filters=a-b", 422, "not indices and ranges"),
    ("/filters/conv1?filters=5-2", 422, "runs backwards"),
    ("/filters/layer4.1.conv2?filters=0-99", 422, "more than 64 filters"),
    ("/filters/conv1?steps=100000", 422, "exceeds the limit"),
    ("/filters/layer1.0.conv1?mode=weights", 422, "conv1 only"),
    ("/filters/conv1?mode=dream", 422, "activation"),
])
def test_bad_filter_requests(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status and message in json.dumps(response.json())


# --- bad input -------------------------------------------------------------------------------------

def _truncated() -> bytes:
    data = face_bytes("happy", fmt="JPEG", size=200)
    return data[: len(data) // 2]


def _huge() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buffer, format="PNG")  # 36 Mpx, a few kB: a decompression bomb
    return buffer.getvalue()


@pytest.mark.parametrize("make, status, message", [
    (lambda: b"hello, I am text", 400, "bad.png: not an image"),
    (lambda: b"", 400, "bad.png: empty file"),
    (_truncated, 400, "bad.png: cannot decode"),
    (_huge, 413, "bad.png: image is 6000x6000 pixels"),
])
def test_bad_images_name_the_file(client, make, status, message):
    response = client.post("/predict", files=upload(face_bytes("happy"), make(), names=["good.png", "bad.png"]))
    assert response.status_code == status and message in response.json()["detail"]
    response = client.post("/saliency", files=upload(make(), names=["bad.png"]))
    assert response.status_code == status


def test_request_limits_and_content_types(client):
    too_many = client.post("/predict", files=upload(*[face_bytes()] * 17))
    assert too_many.status_code == 413 and "at most 16 images" in too_many.json()["detail"]
    body = client.post("/predict", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"})
    assert body.status_code == 413 and "exceeds the limit" in body.json()["detail"]
    wrong = client.post("/predict", content=b"raw bytes", headers={"content-type": "image/png"})
    assert wrong.status_code == 415 and "image/png" in wrong.json()["detail"]
    assert client.post("/predict", json={"images": ["%%%"]}).status_code == 400
    assert client.post("/predict", json={"images": []}).status_code == 422
    assert client.post("/predict", json={"pictures": []}).status_code == 422
    assert "no images" in client.post("/predict", files={"other": ("a.png", b"x")}).json()["detail"]
    assert client.post("/predict?top_k=9", files=upload(face_bytes())).status_code == 422
    assert "unknown target 'joy'" in client.post("/saliency?target=joy", files=upload(face_bytes())).json()["detail"]
    assert client.post("/saliency?method=lime", files=upload(face_bytes())).status_code == 422


def test_streamed_body_over_the_limit_is_refused(client):
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "exceeds the limit" in response.json()["detail"]


def test_a_body_refused_before_routing_is_counted_under_its_endpoint(client):
    before = metric_value(client, "fer_requests_total", endpoint="/predict", status="413")
    response = client.post("/predict", content=b"z" * (5 * 1024 * 1024), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert metric_value(client, "fer_requests_total", endpoint="/predict", status="413") == before + 1


def test_server_keeps_serving_after_bad_input_and_counts_it(client):
    client.post("/predict", files=upload(b"junk"))
    assert client.post("/predict", files=upload(face_bytes())).status_code == 200
    assert metric_value(client, "fer_requests_total", endpoint="/predict", status="400") >= 1


def test_metrics_parse_and_cover_the_service(client):
    client.post("/predict", files=upload(face_bytes()))
    families = {family.name: family for family in text_string_to_metric_families(client.get("/metrics").text)}
    for name in ("fer_requests", "fer_request_duration_seconds", "fer_images", "fer_faces", "fer_batch_size",
                 "fer_queue_depth",
                 "fer_queue_wait_seconds", "fer_inference_seconds", "fer_explanation_seconds",
                 "fer_filter_cache_hits", "fer_filter_cache_misses", "fer_model_info"):
        assert name in families, name
    info = families["fer_model_info"].samples[0].labels
    assert info["backend"] == "torchscript" and info["device"] == "cpu" and len(info["version"]) == 12


# --- start-up ----------------------------------------------------------------------------------------

def test_refuses_to_start_without_a_valid_model(tmp_path, capsys):
    assert service_main(["--model", str(tmp_path / "missing")]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
