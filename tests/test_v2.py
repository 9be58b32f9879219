"""The Open Inference Protocol (KServe v2 / Triton HTTP) through tritonclient, against a real uvicorn server."""

import base64
import gzip
import json
import socket
import struct
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import uvicorn
from tritonclient.utils import InferenceServerException

from schemas.labels import CLASSES
from service.app import create_app
from service.runtime.images import decode_image
from service.oip_models import PLATFORMS
from service.settings import Settings

from .conftest import make_client
from .images import face_bytes

MODEL = "fer-resnet18"
EXPRESSIONS = ["happy", "sad", "surprise", "angry"]
MAX_IMAGES = 16
MAX_BYTES = 4 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(model_dir, **settings):
    """`python -m service`'s app under uvicorn in a background thread, on a free loopback port."""
    app = create_app(Settings(model_dir=model_dir, device="cpu", **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def server(model_dir):
    with serving(model_dir, max_images_per_request=MAX_IMAGES, max_request_bytes=MAX_BYTES, batch_wait_ms=20) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server) as triton_client:
        yield triton_client


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=f"http://{server}", timeout=120) as http_client:
        yield http_client


@pytest.fixture(scope="module")
def config(client) -> dict:
    return client.get_model_config(MODEL)


def images() -> list[bytes]:
    """Faces in several formats, sizes and colour modes, as clients send them."""
    formats = [("PNG", 48, "L"), ("JPEG", 120, "RGB"), ("WEBP", 64, "RGB"), ("PNG", 200, "RGBA")]
    return [face_bytes(expression, seed=5, fmt=fmt, size=size, mode=mode)
            for expression, (fmt, size, mode) in zip(EXPRESSIONS, formats)]


def bytes_input(data: list[bytes], shape=None, binary=True) -> triton.InferInput:
    array = np.array(data, dtype=object).reshape(shape or (len(data), 1))
    tensor = triton.InferInput("images", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def faces_input(faces: np.ndarray, binary=True) -> triton.InferInput:
    tensor = triton.InferInput("faces", list(faces.shape), "UINT8")
    tensor.set_data_from_numpy(faces, binary_data=binary)
    return tensor


def decoded(data: list[bytes], config: dict) -> np.ndarray:
    """What the service decodes uploads to: uint8 N x 1 x H x W."""
    height, width = config["input"][1]["dims"][1:]
    return np.stack([decode_image(d, "x", (height, width), 10**8)[0] for d in data])[:, None]


def predict(http, data: list[bytes]) -> np.ndarray:
    """/predict's probabilities with whole images as faces, as v2 takes them (one row per input)."""
    response = http.post("/predict?faces=none", files=[("files", (f"{i}", d, "application/octet-stream")) for i, d in enumerate(data)])
    assert response.status_code == 200, response.text
    return np.array([[p["faces"][0]["probabilities"][c] for c in CLASSES] for p in response.json()["predictions"]])


def rest_saliency(http, data: list[bytes], **params) -> list[dict]:
    """/saliency?format=json's map of each whole image (as v2 takes them)."""
    response = http.post("/saliency", params={**params, "format": "json", "faces": "none"},
                         files=[("files", (f"{i}", d, "application/octet-stream")) for i, d in enumerate(data)])
    assert response.status_code == 200, response.text
    return [image["faces"][0] for image in response.json()["images"]]


# --- health and metadata -----------------------------------------------------------------------------

def test_server_and_models_are_live_and_ready(client):
    assert client.is_server_live() and client.is_server_ready()
    version = client.get_model_metadata(MODEL)["versions"][0]
    for name in (MODEL, f"{MODEL}-saliency", f"{MODEL}-filters"):
        assert client.is_model_ready(name) and client.is_model_ready(name, version)
    assert not client.is_model_ready("unknown-model")
    assert not client.is_model_ready(MODEL, "not-a-version")
    metadata = client.get_server_metadata()
    assert {"binary_tensor_data", "classification", "model_configuration"} <= set(metadata["extensions"])


def test_repository_index_lists_the_classifier_and_the_explanations(client):
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [(MODEL, "READY"), (f"{MODEL}-saliency", "READY"),
                                                        (f"{MODEL}-filters", "READY")]


def test_model_metadata_and_config_describe_the_tensors(client, config, http):
    metadata = client.get_model_metadata(MODEL)
    backend = http.get("/model").json()["model"]["backend"]  # FER_BACKEND=auto picks the faster here
    height, width = config["input"][1]["dims"][1:]
    assert (height, width) == (48, 48)  # the bad requests below are sized for it
    assert metadata["name"] == MODEL and metadata["platform"] == PLATFORMS[backend]
    assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1, 1]},
                                  {"name": "faces", "datatype": "UINT8", "shape": [-1, 1, height, width]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 7]},
                                   {"name": "label", "datatype": "BYTES", "shape": [-1]},
                                   {"name": "boxes", "datatype": "INT32", "shape": [-1, 4]},
                                   {"name": "image_index", "datatype": "INT32", "shape": [-1]}]
    assert config["max_batch_size"] == MAX_IMAGES and "dynamic_batching" in config
    assert [(i["name"], i["data_type"], i["dims"], i.get("optional")) for i in config["input"]] == [
        ("images", "TYPE_STRING", [1], True), ("faces", "TYPE_UINT8", [1, height, width], True)]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("probabilities", "TYPE_FP32", [7]), ("label", "TYPE_STRING", [1]), ("boxes", "TYPE_INT32", [4]),
        ("image_index", "TYPE_INT32", [1])]
    version = metadata["versions"][0]
    assert client.get_model_config(MODEL, version) == config
    saliency = client.get_model_metadata(f"{MODEL}-saliency", version)
    assert [o["name"] for o in saliency["outputs"]] == ["saliency", "target", "probabilities", "boxes", "image_index"]
    filters = client.get_model_config(f"{MODEL}-filters")
    assert filters["max_batch_size"] == 0 and [i["name"] for i in filters["input"]] == ["layer", "filters"]


# --- inference -----------------------------------------------------------------------------------------

def test_bytes_images_give_predicts_probabilities(client, http):
    data = images()
    result = client.infer(MODEL, [bytes_input(data)])  # binary in, binary out (tritonclient's default)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 7)
    np.testing.assert_allclose(probabilities, predict(http, data), rtol=0, atol=1e-6)
    assert result.as_numpy("label").tolist() == [CLASSES[i].encode() for i in probabilities.argmax(1)]
    flat = client.infer(MODEL, [bytes_input(data, shape=(4,))])  # shape [N] as well as [N, 1]
    np.testing.assert_allclose(flat.as_numpy("probabilities"), probabilities, rtol=0, atol=1e-6)


def test_uint8_faces_sent_and_answered_as_json(client, http, config):
    data = images()
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False),
               triton.InferRequestedOutput("label", binary_data=False)]
    result = client.infer(MODEL, [faces_input(decoded(data, config), binary=False)], outputs=outputs,
                          request_id="faces-1")
    response = result.get_response()
    assert response["id"] == "faces-1" and all("data" in o for o in response["outputs"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), predict(http, data), rtol=0, atol=1e-6)


def test_requested_outputs_and_classification(client, config):
    faces = decoded(images(), config)
    only_label = client.infer(MODEL, [faces_input(faces)], outputs=[triton.InferRequestedOutput("label")])
    assert [o["name"] for o in only_label.get_response()["outputs"]] == ["label"]
    assert only_label.as_numpy("probabilities") is None
    both = client.infer(MODEL, [faces_input(faces)])
    top = client.infer(MODEL, [faces_input(faces)],
                       outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    classes = top.as_numpy("probabilities")
    assert classes.shape == (4, 3)
    for row, probabilities in zip(classes, both.as_numpy("probabilities")):
        ranked = np.argsort(-probabilities)[:3]
        values, indices, labels = zip(*(item.decode().split(":") for item in row))
        assert [int(i) for i in indices] == ranked.tolist() and list(labels) == [CLASSES[i] for i in ranked]
        np.testing.assert_allclose([float(v) for v in values], probabilities[ranked], rtol=1e-6)


def test_json_bytes_are_base64_images_and_compressed_requests_work(client, http):
    data = images()[:2]
    body = {"inputs": [{"name": "images", "shape": [2], "datatype": "BYTES",
                        "data": [base64.b64encode(d).decode() for d in data]}]}
    response = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    probabilities = np.array(response.json()["outputs"][0]["data"]).reshape(2, 7)
    np.testing.assert_allclose(probabilities, predict(http, data), rtol=0, atol=1e-6)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(MODEL, [bytes_input(data)], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=0, atol=1e-6)


def test_saliency_model_matches_the_saliency_endpoint(client, http):
    data = images()[:3]
    for method, target in (("vanilla", None), ("gradcam", "happy")):
        parameters = {"method": method, **({"target": target} if target else {})}
        result = client.infer(f"{MODEL}-saliency", [bytes_input(data)], parameters=parameters)
        rest = rest_saliency(http, data, **parameters)
        maps = result.as_numpy("saliency")
        assert maps.dtype == np.float32 and maps.shape == (3, *np.array(rest[0]["saliency"]).shape)
        # /saliency?format=json rounds to 4 decimals
        np.testing.assert_allclose(maps, [m["saliency"] for m in rest], rtol=0, atol=5.1e-5)
        assert result.as_numpy("target").tolist() == [m["target_index"] for m in rest]
        assert result.get_response()["parameters"]["method"] == method
        predicted = result.as_numpy("probabilities").argmax(1)
        assert [CLASSES[i] for i in predicted] == [m["predicted"] for m in rest]
    assert result.as_numpy("target").tolist() == [CLASSES.index("happy")] * 3


def test_faces_are_found_over_v2_with_their_boxes_and_images_as_predict_finds_them(client, http):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the dev extra) ships the photos")
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, format="JPEG", quality=92)
    data = [images()[0], buffer.getvalue(), images()[1]]  # a crop, a photo with one face, a crop
    rest = http.post("/predict?faces=auto", files=[("files", (f"{i}.png", d)) for i, d in enumerate(data)]).json()
    faces = [(i, face) for i, image in enumerate(rest["predictions"]) for face in image["faces"]]
    for model in (MODEL, f"{MODEL}-saliency"):
        result = client.infer(model, [bytes_input(data)], parameters={"faces": "auto"})
        assert result.as_numpy("image_index").tolist() == [i for i, _ in faces] == [0, 1, 2]
        assert result.as_numpy("boxes").tolist() == [[f["box"][k] for k in ("x", "y", "width", "height")]
                                                     for _, f in faces]
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   [[f["probabilities"][c] for c in CLASSES] for _, f in faces], atol=1e-5)
    blank = io.BytesIO()
    Image.new("RGB", (400, 300), (128, 128, 128)).save(blank, format="PNG")
    nothing = client.infer(MODEL, [bytes_input([blank.getvalue()])], parameters={"faces": "detect"},
                           outputs=[triton.InferRequestedOutput("probabilities", class_count=3),
                                    triton.InferRequestedOutput("boxes")])
    assert nothing.as_numpy("probabilities").shape == (0, 3) and nothing.as_numpy("boxes").shape == (0, 4)
    whole = client.infer(MODEL, [bytes_input(data)])  # the default: each image whole, as before
    assert whole.as_numpy("image_index").tolist() == [0, 1, 2] and whole.as_numpy("boxes")[1].tolist() == [0, 0, 512, 512]
    response = raw_infer(http, MODEL, {**face_header(1, 2304), "parameters": {"faces": "detect"}}, bytes(2304))
    assert response.status_code == 400 and "holds face crops already" in response.json()["error"]
    response = raw_infer(http, MODEL, {**face_header(1, 2304), "parameters": {"faces": "all"}}, bytes(2304))
    assert response.status_code == 400 and "parameter 'faces'" in response.json()["error"]


def test_saliency_model_honours_the_gradcam_layer_as_the_saliency_endpoint_does(client, http):
    data = images()[:2]
    maps = {}
    for layer in ("layer3", "layer4"):
        parameters = {"method": "gradcam", "layer": layer}
        maps[layer] = client.infer(f"{MODEL}-saliency", [bytes_input(data)], parameters=parameters).as_numpy("saliency")
        rest = rest_saliency(http, data, **parameters)
        np.testing.assert_allclose(maps[layer], [m["saliency"] for m in rest], rtol=0, atol=5.1e-5)
    assert np.abs(maps["layer3"] - maps["layer4"]).max() > 1e-3  # layer3's map is not layer4's
    response = raw_infer(http, f"{MODEL}-saliency", {**face_header(1, 2304), "parameters": {
        "method": "vanilla", "layer": "layer3"}}, bytes(2304))
    assert response.status_code == 400 and "layer applies to" in response.json()["error"]


def test_filters_model_matches_the_filters_endpoint(client, http):
    def infer(layer: str, indices: list[int], **parameters):
        name = triton.InferInput("layer", [1], "BYTES")
        name.set_data_from_numpy(np.array([layer.encode()], dtype=object))
        filters = triton.InferInput("filters", [len(indices)], "INT32")
        filters.set_data_from_numpy(np.array(indices, dtype=np.int32))
        return client.infer(f"{MODEL}-filters", [name, filters], parameters=parameters)

    for layer, indices, parameters in (("conv1", [0, 1, 2], {"mode": "weights"}),
                                       ("layer1.0.conv1", [3, 4], {"steps": 4, "size": 16})):
        rest = http.get(f"/filters/{layer}", params={"filters": ",".join(map(str, indices)), "format": "json",
                                                     **parameters}).json()
        result = infer(layer, indices, **parameters)
        np.testing.assert_allclose(result.as_numpy("images"), [f["image"] for f in rest["filters"]], rtol=0, atol=5.1e-5)
        np.testing.assert_allclose(result.as_numpy("activations"), [f["activation"] for f in rest["filters"]],
                                   rtol=1e-6)
        assert result.as_numpy("images").shape == (len(indices), rest["size"], rest["size"])
        assert result.get_response()["parameters"]["cached"] is True  # the REST call's result: one cache, one implementation


# --- bad input ---------------------------------------------------------------------------------------------

def raw_infer(http, model: str, header: dict, binary: bytes = b"", header_length: int | None = None):
    text = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(text) if header_length is None else header_length)} \
        if binary or header_length is not None else {}
    return http.post(f"/v2/models/{model}/infer", content=text + binary, headers=headers)


def face_header(count: int, size: int, shape=None) -> dict:
    return {"inputs": [{"name": "faces", "datatype": "UINT8", "shape": shape or [count, 1, 48, 48],
                        "parameters": {"binary_data_size": size}}]}


BAD_REQUESTS = {
    "unknown model": (404, "unknown model", lambda http: raw_infer(http, "no-such-model", {"inputs": []})),
    "unknown version": (404, "unknown version", lambda http: http.post(
        f"/v2/models/{MODEL}/versions/0/infer", json={"inputs": []})),
    "not JSON": (400, "invalid inference request", lambda http: http.post(f"/v2/models/{MODEL}/infer", content=b"{")),
    "no inputs": (400, "exactly one of", lambda http: raw_infer(http, MODEL, {"inputs": []})),
    "wrong datatype": (400, "must be UINT8", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "faces", "datatype": "FP32", "shape": [1, 1, 48, 48], "data": [0.0] * 2304}]})),
    "unknown datatype": (400, "unknown or unsupported datatype", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "faces", "datatype": "UINT9", "shape": [1], "data": [0]}]})),
    "shape disagrees with JSON data": (400, "holds 4608 elements but `data` has 2304", lambda http: raw_infer(
        http, MODEL, {"inputs": [{"name": "faces", "datatype": "UINT8", "shape": [2, 1, 48, 48], "data": [0] * 2304}]})),
    "shape disagrees with binary size": (400, "needs 4608 bytes", lambda http: raw_infer(
        http, MODEL, face_header(2, 2304), bytes(2304))),
    "value out of range": (400, "do not fit UINT8", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "faces", "datatype": "UINT8", "shape": [1, 1, 48, 48], "data": [300] * 2304}]})),
    "faces of the wrong size": (400, "`faces` must have shape", lambda http: raw_infer(
        http, MODEL, face_header(1, 1024, [1, 1, 32, 32]), bytes(1024))),
    "both inputs": (400, "exactly one of", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "faces", "datatype": "UINT8", "shape": [1, 1, 48, 48], "data": [0] * 2304},
        {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]})),
    "unknown input": (400, "unexpected input 'pixels'", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [0]}]})),
    "unknown output": (400, "unknown output 'logits'", lambda http: raw_infer(http, MODEL, {
        **face_header(1, 2304), "outputs": [{"name": "logits"}]}, bytes(2304))),
    "classification of a non-probability output": (400, "classification applies", lambda http: raw_infer(
        http, MODEL, {**face_header(1, 2304), "outputs": [{"name": "label", "parameters": {"classification": 2}}]},
        bytes(2304))),
    "classification past the classes": (400, "classification 8 asks for more than the 7 classes", lambda http: raw_infer(
        http, MODEL, {**face_header(1, 2304), "outputs": [{"name": "probabilities", "parameters": {"classification": 8}}]},
        bytes(2304))),
    "truncated binary section": (400, "runs past the end of the body", lambda http: raw_infer(
        http, MODEL, face_header(1, 2304), bytes(1000))),
    "binary data left over": (400, "the binary section has 2310 bytes but the inputs declare 2304", lambda http: raw_infer(
        http, MODEL, face_header(1, 2304), bytes(2310))),
    "header length past the body": (400, "Inference-Header-Content-Length is", lambda http: raw_infer(
        http, MODEL, face_header(1, 2304), bytes(2304), header_length=10**6)),
    "header length not a number": (400, "must be an integer", lambda http: http.post(
        f"/v2/models/{MODEL}/infer", content=b"{}", headers={"Inference-Header-Content-Length": "ten"})),
    "binary size without a binary section": (400, "runs past the end", lambda http: raw_infer(
        http, MODEL, face_header(1, 2304))),
    "truncated BYTES element": (400, "declares 5000 bytes", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 104}}]},
        struct.pack("<I", 5000) + bytes(100))),
    "BYTES count disagrees with the shape": (400, "holds 2 elements but the binary data holds 1", lambda http: raw_infer(
        http, MODEL, {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2],
                                  "parameters": {"binary_data_size": 8}}]}, struct.pack("<I", 4) + b"abcd")),
    "not an image": (400, "not an image Pillow can read", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]})),
    "JSON BYTES that are not base64": (400, "must be base64", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]})),
    "too many images": (413, "too many images: 17", lambda http: raw_infer(http, MODEL, face_header(17, 17 * 2304),
                                                                          bytes(17 * 2304))),
    "body over the limit": (413, "exceeds the limit", lambda http: raw_infer(
        http, MODEL, face_header(2000, 2000 * 2304), bytes(2000 * 2304))),
    "huge declared shape": (400, "holds 1000000000000 elements", lambda http: raw_infer(http, MODEL, {"inputs": [
        {"name": "faces", "datatype": "UINT8", "shape": [10**6, 1, 1000, 1000], "data": [0]}]})),
    "unsupported compression": (415, "unsupported Content-Encoding", lambda http: http.post(
        f"/v2/models/{MODEL}/infer", content=b"{}", headers={"Content-Encoding": "br"})),
    "corrupt gzip": (400, "cannot be inflated", lambda http: http.post(
        f"/v2/models/{MODEL}/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})),
    "gzip bomb": (413, "inflated request body exceeds", lambda http: http.post(
        f"/v2/models/{MODEL}/infer", content=gzip.compress(bytes(MAX_BYTES + 1)), headers={"Content-Encoding": "gzip"})),
    "unknown saliency method": (400, "unknown saliency method", lambda http: raw_infer(http, f"{MODEL}-saliency", {
        **face_header(1, 2304), "parameters": {"method": "lime"}}, bytes(2304))),
    "unknown saliency target": (400, "unknown target 'joy'", lambda http: raw_infer(http, f"{MODEL}-saliency", {
        **face_header(1, 2304), "parameters": {"target": "joy"}}, bytes(2304))),
    "non-ASCII digit target": (400, "unknown target '²'", lambda http: raw_infer(http, f"{MODEL}-saliency", {
        **face_header(1, 2304), "parameters": {"target": "²"}}, bytes(2304))),  # '²' passes str.isdigit
    "Grad-CAM layer not a name": (400, "parameter `layer`: 4 is not a name", lambda http: raw_infer(
        http, f"{MODEL}-saliency", {**face_header(1, 2304), "parameters": {"method": "gradcam", "layer": 4}},
        bytes(2304))),
    "saliency method not a name": (400, "parameter `method`", lambda http: raw_infer(http, f"{MODEL}-saliency", {
        **face_header(1, 2304), "parameters": {"method": ["vanilla"]}}, bytes(2304))),
    "unknown Grad-CAM layer": (400, "unknown layer 'layer9'", lambda http: raw_infer(http, f"{MODEL}-saliency", {
        **face_header(1, 2304), "parameters": {"method": "gradcam", "layer": "layer9"}}, bytes(2304))),
    "Grad-CAM layer without a map": (400, "'fc' gives no spatial map", lambda http: raw_infer(
        http, f"{MODEL}-saliency", {**face_header(1, 2304), "parameters": {"method": "gradcam", "layer": "fc"}},
        bytes(2304))),
    "unknown layer": (400, "unknown layer 'layer9'", lambda http: raw_infer(http, f"{MODEL}-filters", {"inputs": [
        {"name": "layer", "datatype": "BYTES", "shape": [1], "data": ["layer9"]},
        {"name": "filters", "datatype": "INT32", "shape": [1], "data": [0]}]})),
    "filter out of range": (400, "conv1 has filters 0-63", lambda http: raw_infer(http, f"{MODEL}-filters", {"inputs": [
        {"name": "layer", "datatype": "BYTES", "shape": [1], "data": ["conv1"]},
        {"name": "filters", "datatype": "INT32", "shape": [1], "data": [64]}]})),
    "non-ASCII digit steps": (400, "parameter 'steps' must be an integer", lambda http: raw_infer(
        http, f"{MODEL}-filters", {
        "inputs": [{"name": "layer", "datatype": "BYTES", "shape": [1], "data": ["conv1"]},
                   {"name": "filters", "datatype": "INT32", "shape": [1], "data": [0]}],
        "parameters": {"steps": "²"}})),  # '²' passes str.isdigit but not int()
    "too many filter steps": (400, "parameter `steps`: 1000000 exceeds the limit", lambda http: raw_infer(
        http, f"{MODEL}-filters", {
        "inputs": [{"name": "layer", "datatype": "BYTES", "shape": [1], "data": ["conv1"]},
                   {"name": "filters", "datatype": "INT32", "shape": [1], "data": [0]}],
        "parameters": {"steps": 10**6}})),
    "filters without a layer": (400, "needs input(s) layer", lambda http: raw_infer(http, f"{MODEL}-filters", {
        "inputs": [{"name": "filters", "datatype": "INT32", "shape": [1], "data": [0]}]})),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_bad_requests_get_the_protocols_error_body(http, case):
    status, message, send = BAD_REQUESTS[case]
    response = send(http)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_tritonclient_raises_the_servers_message(client):
    wrong = triton.InferInput("faces", [1, 1, 48, 48], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 48, 48), dtype=np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [wrong])
    assert raised.value.status() == "400" and "must be UINT8" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata(MODEL, "0")
    assert raised.value.status() == "404" and "unknown version" in raised.value.message()


def test_other_endpoints_keep_their_error_format(http):
    response = http.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "detail" in response.json()


def test_a_full_queue_is_503_with_retry_after_and_more_faces_than_it_holds_413(model_dir, monkeypatch):
    with make_client(model_dir, queue_limit=1) as http:
        response = raw_infer(http, MODEL, face_header(2, 2 * 2304), bytes(2 * 2304))
        assert response.status_code == 413 and "the inference queue holds" in response.json()["error"]
        with monkeypatch.context() as patch:  # as if another request's face were waiting
            patch.setattr(http.app.state.plane.batcher, "_queued_images", 1)
            response = raw_infer(http, MODEL, face_header(1, 2304), bytes(2304))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "queued" in response.json()["error"]
