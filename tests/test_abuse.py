"""A hostile but fair client: broken and malicious images, odd query numbers, invented methods, missing keys,
too many files. The service answers 200 or a 4xx with `{"detail": "<short message>"}`, never a 5xx."""

import io
import json
import logging
import random
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.runtime.images import declared_size, decode_image, decode_photo
from service.server import DrainingServer

from .conftest import make_client
from .hostile_images import bombs, corpus, multi_frame, sixteen_bit
from .images import face, face_bytes

MAX_DETAIL = 600  # characters: messages quote at most a short excerpt of what a client sent


def request_count(text: str, **labels) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "fer_requests_total" and all(sample.labels.get(k) == v for k, v in labels.items()))


def upload(data: bytes, name: str = "image"):
    return [("files", (name, data, "application/octet-stream"))]


def assert_client_error_shape(response, name: str = "") -> None:
    assert response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"detail"} and isinstance(body["detail"], str), f"{name}: {body}"
        assert len(body["detail"]) < MAX_DETAIL, f"{name}: {len(body['detail'])} characters"


@pytest.fixture(scope="module")
def hostile() -> dict[str, bytes]:
    return corpus(seed=0)


# --- images ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["/predict", "/predict?faces=none", "/saliency?format=json"])
def test_hostile_images_get_200_or_4xx_never_5xx(client, hostile, endpoint):
    def send(item):
        name, data = item
        return name, client.post(endpoint, files=upload(data, name))

    # no more at once than the explanation slots (FER_EXPLAIN_WORKERS + FER_EXPLAIN_QUEUE = 5), which would 503
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = dict(pool.map(send, hostile.items()))
    for name, response in answers.items():
        assert_client_error_shape(response, name)
        if response.status_code >= 400:
            assert response.json()["detail"].startswith(name[:40]) or response.status_code == 413, name
    valid = [name for name in hostile if name.startswith("valid.") and name.count(".") == 1]
    assert len(valid) >= 15 and all(answers[name].status_code == 200 for name in valid), \
        {name: answers[name].status_code for name in valid}
    statuses = {response.status_code for response in answers.values()}
    assert {200, 400, 413} <= statuses


def test_decompression_bombs_are_413(client):
    for name, data in bombs().items():
        response = client.post("/predict", files=upload(data, name))
        assert response.status_code == 413, (name, response.text)
        assert name in response.json()["detail"]


def probabilities(client, data: bytes) -> np.ndarray:
    response = client.post("/predict", files=upload(data))
    assert response.status_code == 200, response.text
    return np.array(list(response.json()["predictions"][0]["faces"][0]["probabilities"].values()))


@pytest.mark.parametrize("name", ["16bit.png", "16bit.tiff", "16bit-be.tiff", "float.tiff"])
def test_sixteen_bit_and_float_faces_predict_like_their_eight_bit_versions(client, name):
    deep, eight = sixteen_bit("happy")[name]
    assert Image.open(io.BytesIO(deep)).mode in ("I;16", "I;16B", "I", "F")
    assert probabilities(client, deep) == pytest.approx(probabilities(client, eight), abs=1e-4)


def test_multi_frame_images_use_their_first_frame(client):
    first = face_bytes("happy", seed=0)
    expected = probabilities(client, first)
    tiff = multi_frame()["frames.tiff"]  # lossless: frame 0 is the happy face exactly
    assert probabilities(client, tiff) == pytest.approx(expected, abs=1e-4)
    for name in ("frames.gif", "frames.webp", "frames.png"):
        assert client.post("/predict", files=upload(multi_frame()[name], name)).status_code == 200


def test_small_face_crops_are_decoded_on_the_event_loop_and_larger_images_on_threads(client, monkeypatch):
    import service.dataplane

    handed, to_thread = [], service.dataplane.run_in_threadpool

    async def counted(function, *args):
        handed.append(function)
        return await to_thread(function, *args)

    monkeypatch.setattr(service.dataplane, "run_in_threadpool", counted)
    crop = face_bytes("happy", seed=0)
    assert declared_size(crop) == (48, 48) and declared_size(b"not an image") is None
    assert client.post("/predict?faces=none", files=upload(crop)).status_code == 200
    assert handed == []  # its header said 48x48: decoded where the request was read
    large = io.BytesIO()
    Image.new("L", (600, 600), 128).save(large, format="PNG")  # a few hundred bytes, 360,000 pixels
    assert client.post("/predict?faces=none", files=upload(large.getvalue())).status_code == 200
    assert client.post("/predict", files=upload(crop)).status_code == 200  # faces=auto takes a crop whole
    assert client.post("/predict?faces=detect", files=upload(crop)).status_code == 200  # the detector runs
    # the large image: one hand-off; the detected crop: its decoding and its cutting (detection has its own thread)
    assert len(handed) == 3


def test_large_jpeg_is_decoded_at_reduced_size_close_to_a_full_decode():
    grey = np.asarray(Image.fromarray(face("sad", 1)[0]).resize((3000, 3000), Image.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buffer, format="JPEG", quality=92)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.draft("L", (48, 48)) is not None and image.size == (375, 375)  # 1/8 scale in the decoder
    reduced = decode_image(buffer.getvalue(), "big.jpg", (48, 48), 10_000_000)[0].astype(int)
    full = np.asarray(Image.fromarray(grey).resize((48, 48), Image.BILINEAR)).astype(int)
    assert np.abs(reduced - full).mean() < 4


@pytest.mark.parametrize("kind, orientation", [("JPEG", 1), ("JPEG", 6), ("PNG", 1)])
def test_photos_are_decoded_at_reduced_scale_within_their_pixel_budget(kind, orientation):
    gradient = np.linspace(0, 255, 2400, dtype=np.uint8)[None, :, None].repeat(1800, 0).repeat(3, 2)
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: stored on its side, shown turned a quarter clockwise
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format=kind, exif=exif)
    image, original = decode_photo(buffer.getvalue(), "big", max_pixels=20_000_000, keep_pixels=1_500_000)
    # a JPEG is decoded at 1/2 scale (1.08 MP: at least half of the budget), a PNG in full and then shrunk
    expected = {("JPEG", 1): (900, 1200, 3), ("JPEG", 6): (1200, 900, 3), ("PNG", 1): (1060, 1414, 3)}
    assert image.shape == expected[kind, orientation]
    assert original == ((1800, 2400) if orientation == 6 else (2400, 1800))  # upright (width, height)


# --- query numbers, validation errors and their shape --------------------------------------------------

@pytest.mark.parametrize("url, parameter", [
    ("/saliency?target=%C2%B2", "target"),  # '²' passes str.isdigit
    ("/saliency?target=%D9%A3", "target"),  # Arabic-Indic three
    ("/saliency?target=" + "1" * 5000, "target"),
    ("/filters/conv1?filters=" + "1" * 5000, "filters"),
    ("/filters/conv1?filters=%D9%A1-%D9%A2", "filters"),
    ("/filters/conv1?filters=0-" + "9" * 4400, "filters"),
    ("/predict?top_k=99", "top_k"),
    ("/predict?top_k=" + "9" * 5000, "top_k"),
    ("/filters/conv1?steps=abc", "steps"),
    ("/saliency?method=lime", "method"),
    ("/saliency?method=gradcam&layer=layer9", "layer"),
    ("/saliency?method=gradcam&layer=fc", "layer"),  # a module, but its output is a vector, not a map
    ("/saliency?method=guided_gradcam&layer=fc.1", "layer"),
])
def test_bad_query_numbers_are_422_naming_the_parameter(client, url, parameter):
    method = client.get if url.startswith("/filters") else client.post
    kwargs = {} if url.startswith("/filters") else {"files": upload(face_bytes())}
    response = method(url, **kwargs)
    assert response.status_code == 422, response.text[:300]
    assert_client_error_shape(response)
    assert f"`{parameter}`" in response.json()["detail"]


def test_error_bodies_never_echo_more_than_an_excerpt(client):
    huge_string = json.dumps({"images": "x" * 3_000_000})
    invalid_json = "{" + "y" * 3_000_000
    for body in (huge_string, invalid_json):
        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert_client_error_shape(response)
    long_name = "n" * 100_000 + ".png"
    response = client.post("/predict", json={"images": ["bm90IGFuIGltYWdl"], "filenames": [long_name]})
    assert response.status_code == 400 and "(100004 characters)" in response.json()["detail"]
    assert_client_error_shape(response)
    over = client.post("/predict", content=b"z" * (20 * 1024 * 1024), headers={"content-type": "application/json"})
    assert over.status_code == 413
    assert_client_error_shape(over)


def test_too_many_files_is_413(client):
    response = client.post("/predict", files=[("files", (f"{i}.png", face_bytes(), "image/png")) for i in range(17)])
    assert response.status_code == 413 and "at most 16 images" in response.json()["detail"]
    many_fields = [("note", (None, "x")) for _ in range(40)] + upload(face_bytes())
    assert client.post("/predict", files=many_fields).status_code == 413
    as_json = client.post("/predict", json={"images": ["AAAA"] * 17})
    assert as_json.status_code == 413 and "17" in as_json.json()["detail"]


# --- metrics --------------------------------------------------------------------------------------------

def test_metrics_labels_stay_bounded_whatever_clients_send(client):
    rng = random.Random(0)
    for i in range(3000):
        method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(8))
        client.request(method, f"/{rng.random()}/{i}")
    client.request("PROPFIND", "/predict")
    text = client.get("/metrics").text
    assert len(text.encode()) < 100_000, f"/metrics is {len(text.encode())} bytes"
    assert request_count(text, method="other", endpoint="unmatched", status="404") >= 3000
    assert request_count(text, method="other", endpoint="/predict", status="405") >= 1


# --- API keys and CORS ------------------------------------------------------------------------------------

def test_api_keys_guard_the_api_and_leave_probes_open(model_dir, caplog):
    caplog.set_level(logging.DEBUG)
    with make_client(model_dir, api_keys=["first-key", "second-key"]) as keyed:
        missing = keyed.post("/predict", files=upload(face_bytes()))
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = keyed.post("/predict", files=upload(face_bytes()), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid API key"}
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert keyed.get("/model", headers={"X-API-Key": "wrong"}).status_code == 401
        assert keyed.post("/predict", files=upload(face_bytes()),
                          headers={"Authorization": "Bearer first-key"}).status_code == 200
        assert keyed.get("/filters", headers={"X-API-Key": "second-key"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert keyed.get(path).status_code == 200, path
        assert keyed.get("/v2/health/live").status_code != 401  # KServe-style probes are open where they exist
        assert keyed.get("/no-such-route").status_code == 404
        assert request_count(keyed.get("/metrics").text, method="POST", endpoint="/predict", status="401") == 2
        document = keyed.get("/openapi.json").json()
        assert "401" in document["paths"]["/predict"]["post"]["responses"]
        assert "401" not in document["paths"]["/healthz"]["get"]["responses"]
    assert not any("first-key" in record.getMessage() or "second-key" in record.getMessage()
                   for record in caplog.records)


def test_api_keys_file_is_read_again_when_the_secret_changes(model_dir, tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text("# one key per line\nold-key\n")
    with make_client(model_dir, api_keys_file=keys, metrics_require_key=True) as keyed:
        assert keyed.get("/filters", headers={"X-API-Key": "old-key"}).status_code == 200
        assert keyed.get("/metrics").status_code == 401
        assert keyed.get("/metrics", headers={"X-API-Key": "old-key"}).status_code == 200
        keys.write_text("new-key\nanother-key\n")
        assert keyed.get("/filters", headers={"X-API-Key": "old-key"}).status_code == 401
        assert keyed.get("/filters", headers={"X-API-Key": "new-key"}).status_code == 200


def test_an_empty_or_missing_keys_file_stops_the_start(model_dir, tmp_path):
    (tmp_path / "empty").write_text("\n# nothing\n")
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match="API keys file"):
            make_client(model_dir, api_keys_file=path)


def test_cors_headers_only_when_origins_are_set(client, model_dir):
    origin = {"Origin": "https://ui.example"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    with make_client(model_dir, cors_origins=["https://ui.example"], api_keys=["k"]) as cors:
        preflight = cors.options("/predict", headers={**origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "x-api-key"})
        assert preflight.status_code == 200  # no key needed for a preflight
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
        refused = cors.post("/predict", files=upload(face_bytes()), headers=origin)
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://ui.example"
        answered = cors.post("/saliency", files=upload(face_bytes()), headers={**origin, "X-API-Key": "k"})
        assert "X-Targets" in answered.headers["access-control-expose-headers"]
        other = cors.get("/healthz", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


# --- contract ----------------------------------------------------------------------------------------------

def test_openapi_defines_every_reference_and_documents_the_error_shape(client):
    document = client.get("/openapi.json").json()
    text = json.dumps(document)
    schemas = document["components"]["schemas"]
    for reference in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert reference in schemas, reference
    assert "ImagesRequest" in schemas and "HTTPValidationError" not in schemas
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("4") or (status == "503" and path != "/readyz"):
                    schema = response["content"]["application/json"]["schema"]
                    shape = "ProtocolErrorResponse" if path.startswith("/v2") else "ErrorResponse"  # {"error"}
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, (path, method, status)


# --- draining -------------------------------------------------------------------------------------------------

def test_readiness_turns_503_the_moment_sigterm_arrives(model_dir):
    with make_client(model_dir) as fresh:
        app = fresh.app
        assert fresh.get("/readyz").status_code == 200
        server = DrainingServer(uvicorn.Config(app), app.state.draining)
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit
        assert fresh.get("/readyz").status_code == 503 and fresh.get("/readyz").json()["status"] == "draining"
        assert fresh.get("/healthz").status_code == 200
