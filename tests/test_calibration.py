"""Temperature scaling: fitted at export, recorded in the manifest, applied after TTA by every backend, and never
changing a label; older directories without a temperature still load."""

import json
import shutil

import numpy as np
import pytest
import torch

from schemas.manifest import Calibration
from service.runtime.backends import cpu_runs_int8_exactly, load_backend
from service.runtime.modeldir import ModelDirError, load_manifest
from service.runtime.tta import calibrate, predict_with_tta
from training.calibration import fit_temperature, record_calibration
from training.data import load_split
from training.evaluate import evaluate_model_dir
from training.metrics import expected_calibration_error, reliability
from training.quantize import quantize_model_dir

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


HOT = {"none": 0.5, "flip": 0.4, "crops": 2.5}  # far from 1, and one per TTA, so that each shows


@pytest.fixture
def hot_model_dir(model_dir, tmp_path):
    """The session's model directory with a temperature far from 1 for each TTA."""
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    fitted = load_manifest(copy).calibrations
    assert sorted(c.tta for c in fitted) == sorted(HOT) and {c.split for c in fitted} == {"val"}  # `train` fitted them
    record_calibration(copy, [c.model_copy(update={"temperature": HOT[c.tta]}) for c in fitted])
    return copy


def test_every_backend_and_tta_apply_the_temperature_alike_and_no_label_changes(hot_model_dir):
    manifest = load_manifest(hot_model_dir)
    faces = load_split("synthetic:350", "val", manifest.input.height).images[:40].unsqueeze(1).numpy()
    runs = [("torchscript", "fp32"), ("onnx", "fp32")]
    if cpu_runs_int8_exactly():  # without VNNI onnxruntime's int8 kernels saturate and no int8 model is made
        quantize_model_dir(hot_model_dir, "synthetic:3500")  # the data it was trained on
        manifest = load_manifest(hot_model_dir)
        runs.append(("onnx", "int8"))
    backends = {f"{name} {precision}": load_backend(hot_model_dir, manifest, name, torch.device("cpu"), precision)[0]
                for name, precision in runs}
    for tta, temperature in HOT.items():
        assert manifest.temperature(tta) == temperature
        for name, backend in backends.items():
            raw = predict_with_tta(backend.predict, faces, tta)
            served = predict_with_tta(backend.predict, faces, tta, temperature)
            np.testing.assert_allclose(served, calibrate(raw, temperature), atol=1e-6)
            assert (served.argmax(1) == raw.argmax(1)).all(), f"{name}: calibration changed a label"
            assert (served.max(1).mean() > raw.max(1).mean()) == (temperature < 1)  # T < 1 sharpens, > 1 softens
            np.testing.assert_allclose(served.sum(1), 1, atol=1e-5)
        fp32 = [predict_with_tta(backends[name].predict, faces, tta, temperature) for name in ("torchscript fp32",
                                                                                                "onnx fp32")]
        np.testing.assert_allclose(*fp32, atol=1e-4)  # the parity check's agreement, after calibration too


def test_the_service_serves_calibrated_probabilities_and_shows_the_calibration(hot_model_dir):
    with make_client(hot_model_dir) as client:
        model = client.app.state.plane.model
        body = client.post("/predict?faces=none", files=upload(face_bytes("happy"))).json()
        probabilities = np.array(list(body["predictions"][0]["faces"][0]["probabilities"].values()))
        crop = model.decode("f", face_bytes("happy"), "none").crops
        raw = predict_with_tta(model.backend.predict, crop, model.tta)[0]
        np.testing.assert_allclose(probabilities, calibrate(raw[None], HOT[model.tta])[0], atol=1e-5)
        shown = client.get("/model").json()["manifest"]["calibrations"]
        assert {c["tta"]: c["temperature"] for c in shown} == HOT and all(c["ece_after"] >= 0 for c in shown)


def served_probabilities(client, data: bytes) -> np.ndarray:
    face = client.post("/predict?faces=none", files=upload(data)).json()["predictions"][0]["faces"][0]
    return np.array(list(face["probabilities"].values()))


def uncalibrated(client, data: bytes) -> np.ndarray:
    model = client.app.state.plane.model
    return predict_with_tta(model.backend.predict, model.decode("f", data, "none").crops, model.tta)[0]


def test_a_manifest_of_one_calibration_reads_as_one_for_its_tta(hot_model_dir):
    """Directories exported before 2026-12-06 hold one calibration, of their own TTA, as `calibration`."""
    path = hot_model_dir / "manifest.json"
    older = json.loads(path.read_text())
    older["calibration"] = next(c for c in older.pop("calibrations") if c["tta"] == "flip")
    path.write_text(json.dumps(older))
    manifest = load_manifest(hot_model_dir)
    assert [c.tta for c in manifest.calibrations] == ["flip"] and manifest.calibration.temperature == 0.4
    assert manifest.temperature("flip") == 0.4 and manifest.temperature("crops") == 1.0
    with make_client(hot_model_dir, tta="crops") as client:  # a TTA without a temperature: as the model gives it
        data = face_bytes("happy")
        np.testing.assert_allclose(served_probabilities(client, data), uncalibrated(client, data), atol=1e-6)
    older["calibrations"] = [older["calibration"]] * 2
    older.pop("calibration")
    path.write_text(json.dumps(older))
    with pytest.raises(ModelDirError, match="more than one calibration for one TTA"):
        load_manifest(hot_model_dir)


def test_a_manifest_without_a_temperature_still_loads_and_serves_as_it_did(hot_model_dir):
    path = hot_model_dir / "manifest.json"
    older = json.loads(path.read_text())
    older.pop("calibrations")
    older["artifacts"].pop("reliability_plot")
    path.write_text(json.dumps(older))
    manifest = load_manifest(hot_model_dir)
    assert manifest.calibration is None and manifest.temperature("flip") == 1.0
    with make_client(hot_model_dir) as client:
        data = face_bytes("sad")
        np.testing.assert_allclose(served_probabilities(client, data), uncalibrated(client, data), atol=1e-6)


def test_evaluate_applies_the_temperature_of_the_tta_it_evaluates_with(hot_model_dir):
    for tta in ("crops", None):
        result = evaluate_model_dir(hot_model_dir, "synthetic:350", "val", tta=tta)
        assert result["temperature"] == HOT[tta or "flip"] and result["tta"] == (tta or "flip")


def test_each_tta_the_service_is_set_to_serves_with_its_own_temperature(hot_model_dir):
    for tta, temperature in HOT.items():
        with make_client(hot_model_dir, tta=tta) as client:  # FER_TTA overrides the manifest's flip
            data = face_bytes("happy")
            raw = uncalibrated(client, data)
            np.testing.assert_allclose(served_probabilities(client, data), calibrate(raw[None], temperature)[0],
                                       atol=1e-5)
    with pytest.raises(ValueError):
        Calibration(temperature=0, split="val", samples=1, tta="flip", ece_before=0, ece_after=0, nll_before=0,
                    nll_after=0, reliability_before=[], reliability_after=[])
