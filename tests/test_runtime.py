"""The runtime layer: free of the HTTP stack, explanations from Captum equal to the plain formulas, weights
never accumulating gradients, faithfulness measured as the papers define it."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schemas.labels import CLASSES
from service.runtime.architectures import build_model
from service.runtime.explain import METHODS, Explainer, normalise
from training.faithfulness import deletion_insertion, randomisation_order, spearman, ssim
from service.runtime.modeldir import load_eager_model, load_manifest
from service.runtime.tta import predict_with_tta, views
from training.data import load_split

from .conftest import ROOT, make_client
from .images import encode, face_bytes, upload


def test_training_imports_no_http_stack():
    code = ("import sys, training.train, training.export, training.evaluate; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'fastapi', 'starlette', 'prometheus_client', 'pydantic_settings', 'uvicorn'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def explainer(model_dir):
    model = load_eager_model(model_dir, load_manifest(model_dir), torch.device("cpu"))
    return Explainer(model, "resnet18", torch.device("cpu"))


@pytest.fixture(scope="module")
def faces():
    return load_split("synthetic:100", "val", 48).images[:6].unsqueeze(1)


def _reference_vanilla(model, faces, targets):
    """The report's saliency written out: |d score / d input|, max over the replicated channels."""
    inputs = model.preprocess(faces.float()).requires_grad_(True)
    (gradient,) = torch.autograd.grad(model.net(inputs).gather(1, targets[:, None]).sum(), inputs)
    return normalise(gradient.abs().amax(1))


def _reference_gradcam(model, faces, targets):
    net, features = model.net, {}
    handle = net.layer4.register_forward_hook(lambda module, inputs, output: features.update(out=output))
    logits = net(model.preprocess(faces.float()).requires_grad_(True))  # the weights are frozen
    handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), features["out"])
    cam = F.relu((gradient.mean((2, 3), keepdim=True) * features["out"]).sum(1, keepdim=True))
    size = model.image_size
    return normalise(F.interpolate(cam, size=[size, size], mode="bilinear", align_corners=False)[:, 0])


def test_captum_maps_equal_the_plain_formulas(explainer, faces):
    """Tolerance: vanilla and Grad-CAM 1e-5 (same arithmetic); SmoothGrad, whose noise differs, a rank
    correlation of at least 0.6 with the noise-free map's neighbourhood average."""
    vanilla, targets, _ = explainer.saliency(faces, "vanilla")
    assert torch.allclose(vanilla, _reference_vanilla(explainer.model, faces, targets), atol=1e-5)
    gradcam, targets, _ = explainer.saliency(faces, "gradcam")
    assert torch.allclose(gradcam, _reference_gradcam(explainer.model, faces, targets), atol=1e-5)
    smooth, _, _ = explainer.saliency(faces, "smoothgrad")
    blurred_vanilla = F.avg_pool2d(vanilla[:, None], 5, stride=1, padding=2)[:, 0]
    assert float(spearman(smooth.flatten(1), blurred_vanilla.flatten(1)).mean()) > 0.6


@pytest.mark.parametrize("method", [name for name, method in METHODS.items() if method.single_pass])
def test_single_pass_methods_answer_as_with_the_predicted_class_named(explainer, faces, method):
    """One forward pass gives the map, the probabilities and the predicted class: the same as a separate
    prediction followed by the method with those classes as its targets."""
    maps, targets, probabilities = explainer.saliency(faces, method)
    inputs = explainer.model.preprocess(faces.float()).requires_grad_(True)
    with torch.no_grad():
        expected = torch.softmax(explainer.model.net(inputs), 1)
    assert torch.allclose(probabilities, expected, atol=1e-6) and targets.tolist() == expected.argmax(1).tolist()
    named = METHODS[method].attribute(explainer, explainer.model.net, inputs, expected.argmax(1), None)
    assert torch.allclose(maps, normalise(named.detach()), atol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_normalised_maps_and_leaves_weights_without_gradients(explainer, faces, method):
    maps, targets, probabilities = explainer.saliency(faces[:2], method, target=3)
    assert maps.shape == (2, 32, 32) and float(maps.min()) == 0 and float(maps.max()) == pytest.approx(1)
    assert targets.tolist() == [3, 3] and probabilities.shape == (2, len(CLASSES))
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in explainer.model.parameters())


def test_gradcam_on_any_layer_and_unknown_layers_are_refused(explainer, faces):
    early, _, _ = explainer.saliency(faces[:2], "gradcam", layer="layer2.0.conv1")
    late, _, _ = explainer.saliency(faces[:2], "gradcam")
    assert early.shape == late.shape and not torch.allclose(early, late)
    with pytest.raises(KeyError):
        explainer.saliency(faces[:2], "gradcam", layer="layer9")
    with pytest.raises(ValueError, match="unknown saliency method 'lime'"):
        explainer.saliency(faces[:2], "lime")


def test_cancellation_stops_work_between_forward_passes(explainer, faces):
    import threading

    from service.runtime.explain import Cancelled

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        explainer.saliency(faces, "smoothgrad", cancel=cancel)
    with pytest.raises(Cancelled):
        explainer.filter_inputs("layer4.1.conv2", [0, 1], steps=500, cancel=cancel)
    maps, _, _ = explainer.saliency(faces[:1], "vanilla")  # the explainer is usable afterwards
    assert maps.shape[0] == 1


def test_service_explanations_leave_weight_gradients_none(client):
    for method in METHODS:
        response = client.post(f"/saliency?method={method}&format=json", files=upload(face_bytes("happy")))
        assert response.status_code == 200, (method, response.text)
    assert client.get("/filters/layer3.0.conv2?filters=0-1&steps=3&format=json").status_code == 200
    model = client.app.state.plane.model
    assert all(parameter.grad is None for parameter in model.explainer.model.parameters())


def test_unknown_method_is_a_422_listing_the_valid_ones(client):
    response = client.post("/saliency?method=lime", files=upload(face_bytes("happy")))
    assert response.status_code == 422
    assert all(name in response.text for name in METHODS)


def test_methods_are_listed_with_their_faithfulness(client):
    methods = client.get("/explanations").json()["methods"]
    assert [m["name"] for m in methods] == list(METHODS)
    assert {m["name"] for m in methods if m["uses_layer"]} == {"gradcam", "guided_gradcam"}


def test_other_class_names_are_served_and_a_wrong_count_is_refused(model_dir, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(model_dir, renamed)
    manifest = json.loads((renamed / "manifest.json").read_text())
    names = ["wut", "ew", "eek", "yay", "meh", "oh", "hm"]
    manifest["classes"] = names
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with make_client(renamed) as client:
        body = client.post("/predict", files=upload(face_bytes("happy"))).json()
        assert set(body["predictions"][0]["faces"][0]["probabilities"]) == set(names)
        saliency = client.post("/saliency?format=json&target=yay", files=upload(face_bytes("happy"))).json()
        assert saliency["images"][0]["faces"][0]["target"] == "yay"
    manifest["classes"] = names[:5]
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="5 classes"):
        with make_client(renamed):
            pass


def test_tta_views_and_mean():
    images = np.arange(2 * 48 * 48, dtype=np.uint8).reshape(2, 1, 48, 48)
    assert len(views(images, "none")) == 1 and len(views(images, "flip")) == 2 and len(views(images, "crops")) == 10
    assert np.array_equal(views(images, "flip")[1], images[..., ::-1])
    calls = []

    def predict(batch):
        calls.append(len(batch))
        return np.tile(batch.reshape(len(batch), -1)[:, :1].astype(np.float32), (1, 7))

    out = predict_with_tta(predict, images, "crops")
    assert calls == [20] and out.shape == (2, 7)  # one batch for all views


def test_tta_of_evaluate_and_of_the_service_agree(model_dir, capsys):
    from training.__main__ import main as training_main

    faces = load_split("synthetic:100", "val", 48)
    manifest = load_manifest(model_dir)
    assert manifest.tta == "flip"  # the training default, recorded for the service
    with make_client(model_dir) as client:
        served = client.post("/predict?faces=none",
                             files=upload(*[encode(image) for image in faces.images[:8].numpy()])).json()
    served = np.array([[p["faces"][0]["probabilities"][c] for c in CLASSES] for p in served["predictions"]])
    model = load_eager_model(model_dir, manifest, torch.device("cpu"))
    with torch.no_grad():
        expected = predict_with_tta(lambda b: model(torch.from_numpy(b)).numpy(), faces.images[:8, None].numpy(),
                                    "flip", manifest.temperature("flip"))  # as calibrated
    assert np.abs(served - expected).max() < 1e-5
    assert training_main(["evaluate", "--model", str(model_dir), "--data", "synthetic:100"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] == "flip"


# --- faithfulness metrics, against the papers' definitions ---------------------------------------------

def test_deletion_and_insertion_follow_petsiuk():
    """A model that scores the mean brightness of the left half: a map on the left half deletes the evidence
    first (low deletion AUC, high insertion AUC); the mirrored map the opposite."""
    class LeftHalf(torch.nn.Module):
        image_size = 16

        def forward(self, images):
            score = images[..., :8].float().mean((1, 2, 3)) / 255
            return torch.stack([score, 1 - score], 1)

    images = torch.full((1, 1, 16, 16), 255, dtype=torch.uint8)
    images[..., 8:] = 0
    left = torch.zeros(1, 16, 16)
    left[..., :8] = 1
    left += torch.rand(1, 16, 16) * 0.01
    good_deletion, good_insertion = deletion_insertion(LeftHalf(), images, left, torch.tensor([0]))
    bad_deletion, bad_insertion = deletion_insertion(LeftHalf(), images, 1 - left, torch.tensor([0]))
    assert good_deletion < bad_deletion and good_insertion > bad_insertion


def test_rank_correlation_and_ssim():
    a = torch.rand(3, 100)
    assert torch.allclose(spearman(a, a), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a), -torch.ones(3, dtype=torch.float64))
    maps = torch.rand(2, 24, 24)
    assert torch.allclose(ssim(maps, maps), torch.ones(2, dtype=torch.float64))
    assert float(ssim(maps, torch.rand(2, 24, 24)).mean()) < 0.3


def test_randomisation_runs_from_the_output_back_to_the_input():
    order = randomisation_order(build_model("resnet18", 48))
    assert order[0] == "fc.1" and order[1] == "layer4.1" and order[-2:] == ["bn1", "conv1"] and len(order) == 11


def test_export_measures_faithfulness_and_the_service_shows_it(model_dir, tmp_path):
    from training.__main__ import main as training_main

    out = tmp_path / "explained"
    assert training_main(["export", "--checkpoint", str(model_dir / "best.pt"), "--out", str(out),
                          "--explanations", "4", "--data", "synthetic:100"]) == 0
    assert "faithfulness" in load_manifest(out).artifacts
    with make_client(out) as client:
        rows = client.get("/model").json()["faithfulness"]
        methods = client.get("/explanations").json()["methods"]
    assert [row["method"] for row in rows] == list(METHODS)
    for row in rows:
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
        assert len(row["cascade"]) == 11 and isinstance(row["passes_sanity_check"], bool)
    assert all(isinstance(m["passes_sanity_check"], bool) for m in methods)


def test_ten_crop_is_the_corners_and_centre_and_their_mirrors():
    from service.runtime.tta import CROP

    images = np.zeros((1, 1, 48, 48), dtype=np.uint8)
    images[..., :24, :24] = 200  # the top-left quarter bright
    crops = views(images, "crops")
    side = round(48 * CROP)
    assert len(crops) == 10 and all(c.shape == images.shape and c.dtype == np.uint8 for c in crops)
    top_left, top_right, bottom_left, bottom_right, centre = (c[0, 0] for c in crops[:5])
    assert top_left[:24 * 48 // side - 1, :24 * 48 // side - 1].min() == 200  # the corner crop enlarges the quarter
    assert top_right[0, -1] == 0 and bottom_left[-1, 0] == 0 and bottom_right[0, 0] == 200 < 255
    assert centre[0, 0] == 200 and centre[-1, -1] == 0
    for original, mirrored in zip(crops[:5], crops[5:]):
        assert np.array_equal(mirrored, original[..., ::-1])
