"""Temperature scaling: fitted at export, recorded in the manifest, applied after TTA by every backend, and never
changing a label; older directories without a temperature still load."""

import json
import shutil

import numpy as np
import pytest
import torch

from schemas.manifest import Calibration
from service.runtime.backends import load_backend
from service.runtime.modeldir import load_manifest
from service.runtime.tta import calibrate, predict_with_tta
from training.calibration import fit_temperature, record_calibration
from training.data import load_split
from training.metrics import expected_calibration_error, reliability

from .conftest import make_client
from .images import face_bytes, upload


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.5, (20000, 7))
    truth = torch.softmax(torch.from_numpy(logits / 2.0), 1).numpy()  # the labels follow softmax(z / 2)
    labels = np.array([rng.choice(7, p=row) for row in truth])
    model = torch.softmax(torch.from_numpy(logits), 1).numpy()  # the model says softmax(z): overconfident
    assert fit_temperature(model, labels) == pytest.approx(2.0, rel=0.05)
    assert expected_calibration_error(calibrate(model, 2.0), labels) < expected_calibration_error(model, labels) / 3


def test_expected_calibration_error_of_a_model_right_as_often_as_it_says_is_zero():
    probabilities = np.tile([0.8, 0.2], (1000, 1))
    labels = np.array([0] * 800 + [1] * 200)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(probabilities, np.zeros(1000, dtype=int)) == pytest.approx(0.2)
    rows = reliability(probabilities, labels, bins=15)
    assert sum(row.count for row in rows) == 1000 and rows[12].count == 1000  # 0.8 falls in [0.8, 0.867)


@pytest.fixture
def hot_model_dir(model_dir, tmp_path):
    """The session's model directory with a temperature far from 1, so that its effect shows."""
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    fitted = load_manifest(copy).calibration
    assert fitted is not None and fitted.split == "val"  # `train` fitted one at export
    record_calibration(copy, fitted.model_copy(update={"temperature": 0.4}))
    return copy


def test_every_backend_and_tta_apply_the_temperature_alike_and_no_label_changes(hot_model_dir):
    manifest = load_manifest(hot_model_dir)
    faces = load_split("synthetic:350", "val", manifest.input.height).images[:40].unsqueeze(1).numpy()
    backends = {name: load_backend(hot_model_dir, manifest, name, torch.device("cpu"))[0]
                for name in ("torchscript", "onnx")}
    for tta in ("none", "flip", "crops"):
        served = {name: predict_with_tta(b.predict, faces, tta, 0.4) for name, b in backends.items()}
        raw = predict_with_tta(backends["torchscript"].predict, faces, tta)
        np.testing.assert_allclose(served["torchscript"], served["onnx"], atol=1e-4)
        np.testing.assert_allclose(served["torchscript"], calibrate(raw, 0.4), atol=1e-6)
        assert (served["onnx"].argmax(1) == raw.argmax(1)).all()
        assert served["torchscript"].max(1).mean() > raw.max(1).mean()  # T < 1 sharpens
        np.testing.assert_allclose(served["onnx"].sum(1), 1, atol=1e-5)


def test_the_service_serves_calibrated_probabilities_and_shows_the_calibration(hot_model_dir):
    with make_client(hot_model_dir) as client:
        model = client.app.state.plane.model
        body = client.post("/predict?faces=none", files=upload(face_bytes("happy"))).json()
        probabilities = np.array(list(body["predictions"][0]["faces"][0]["probabilities"].values()))
        crop = model.decode("f", face_bytes("happy"), "none").crops
        raw = predict_with_tta(model.backend.predict, crop, model.tta)[0]
        np.testing.assert_allclose(probabilities, calibrate(raw[None], 0.4)[0], atol=1e-5)
        assert client.get("/model").json()["manifest"]["calibration"]["temperature"] == 0.4


def served_probabilities(client, data: bytes) -> np.ndarray:
    face = client.post("/predict?faces=none", files=upload(data)).json()["predictions"][0]["faces"][0]
    return np.array(list(face["probabilities"].values()))


def uncalibrated(client, data: bytes) -> np.ndarray:
    model = client.app.state.plane.model
    return predict_with_tta(model.backend.predict, model.decode("f", data, "none").crops, model.tta)[0]


def test_a_manifest_without_a_temperature_still_loads_and_serves_as_it_did(hot_model_dir):
    path = hot_model_dir / "manifest.json"
    older = json.loads(path.read_text())
    older.pop("calibration")
    older["artifacts"].pop("reliability_plot")
    path.write_text(json.dumps(older))
    manifest = load_manifest(hot_model_dir)
    assert manifest.calibration is None and manifest.temperature("flip") == 1.0
    with make_client(hot_model_dir) as client:
        data = face_bytes("sad")
        np.testing.assert_allclose(served_probabilities(client, data), uncalibrated(client, data), atol=1e-6)


def test_the_temperature_applies_to_the_tta_it_was_fitted_with_only(hot_model_dir):
    assert load_manifest(hot_model_dir).temperature("crops") == 1.0
    with make_client(hot_model_dir, tta="crops") as client:  # FER_TTA overrides the manifest's flip
        data = face_bytes("happy")
        np.testing.assert_allclose(served_probabilities(client, data), uncalibrated(client, data), atol=1e-6)
    with pytest.raises(ValueError):
        Calibration(temperature=0, split="val", samples=1, tta="flip", ece_before=0, ece_after=0, nll_before=0,
                    nll_after=0, reliability_before=[], reliability_after=[])
