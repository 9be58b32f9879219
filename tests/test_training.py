import json
import math
import shutil
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from schemas.labels import CLASSES
from schemas.manifest import Manifest, TrainingConfig
from service.runtime.architectures import build_model
from service.runtime.backends import cpu_runs_int8_exactly
from service.runtime.modeldir import file_sha256, load_manifest, write_manifest
from service.runtime.tta import views
from training.__main__ import main as training_main
from training.data import load_split
from training.export import ExportError, export_onnx, verify_parity
from training.model_card import training_command
from training.soup import recompute_batch_norm

from .conftest import ROOT, make_client


def test_tiny_training_on_synthetic_faces_is_far_above_chance(trained_run):
    metrics = json.loads((trained_run["dir"] / "metrics.json").read_text())
    print(f"synthetic training + export took {trained_run['seconds']:.1f}s, val accuracy {metrics['accuracy']:.3f}")
    assert metrics["accuracy"] >= 0.80
    assert set(metrics["per_class"]) == set(CLASSES)
    assert 0 < metrics["macro_f1"] <= 1 and metrics["samples"] == 700


def test_run_directory_holds_every_output(model_dir):
    for name in ("history.json", "history.csv", "history.png", "confusion_matrix.json", "confusion_matrix.png",
                 "metrics.json", "model.pt", "model.onnx", "manifest.json", "architecture.json", "best.pt",
                 "checkpoint.pt"):
        assert (model_dir / name).is_file(), name
    history = json.loads((model_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(history[0])
    confusion = json.loads((model_dir / "confusion_matrix.json").read_text())
    assert confusion["classes"] == list(CLASSES) and sum(map(sum, confusion["counts"])) == 700
    assert all(abs(sum(row) - 1) < 1e-3 for row in confusion["normalized"])


def test_manifest_describes_and_hashes_the_artifacts(model_dir):
    manifest = Manifest.model_validate_json((model_dir / "manifest.json").read_text())
    assert manifest.classes == list(CLASSES)
    assert (manifest.input.height, manifest.preprocessing.resize_to) == (48, 32)
    assert manifest.training.epochs == 5 and manifest.validation.accuracy >= 0.8
    assert manifest.artifacts["onnx"].sha256 == file_sha256(model_dir / "model.onnx")
    assert manifest.version == manifest.artifacts["torchscript"].sha256[:12]
    assert {"torch", "torchvision", "onnx", "onnxruntime"} <= set(manifest.libraries)


def test_export_parity_holds_and_fails_loudly_when_broken(model_dir, tmp_path):
    images = load_split("synthetic:70", "val").images
    state = torch.load(model_dir / "best.pt", weights_only=True)
    model = build_model("resnet18", 32)
    model.load_state_dict(state["model"])
    differences = verify_parity(model.eval(), model_dir, images)
    assert max(differences.values()) <= 1e-4

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(model_dir / "model.pt", broken / "model.pt")
    shutil.copy(model_dir / "weights.safetensors", broken / "weights.safetensors")
    export_onnx(build_model("resnet18", 32).eval(), images[:2].unsqueeze(1), broken / "model.onnx")  # other weights
    with pytest.raises(ExportError, match="onnx"):
        verify_parity(model.eval(), broken, images)


def test_export_command_writes_a_verified_directory_with_precomputed_filters(model_dir, tmp_path):
    out = tmp_path / "exported"
    assert training_main(["export", "--checkpoint", str(model_dir / "best.pt"), "--out", str(out), "--filters"]) == 0
    manifest = load_manifest(out)
    assert "history" in manifest.artifacts and "metrics" in manifest.artifacts
    assert len(list((out / "filters").glob("*.npz"))) == 21  # 20 convolutions + conv1's raw kernels
    with make_client(out) as client:  # the service answers the default views from the precomputed files
        assert client.get("/filters/layer3.1.conv2").headers["x-cache"] == "hit"
        assert client.get("/filters/conv1?mode=weights").headers["x-cache"] == "hit"
        assert client.get("/filters/conv1?filters=0-3&steps=2").headers["x-cache"] == "miss"


def test_export_averages_checkpoints_of_one_run_and_measures_the_average(model_dir, tmp_path, capsys):
    last = torch.load(model_dir / "checkpoint.pt", weights_only=True)
    # a second checkpoint of the same run: its last epoch's weight EMA (the last epoch kept the raw weights),
    # written before the re-framing ranges were recorded (a run resumed across that change)
    ema = {name.removeprefix("module."): tensor for name, tensor in last["ema"].items() if name.startswith("module.")}
    second = tmp_path / "ema.pt"
    older_config = {name: value for name, value in last["config"].items() if not name.startswith("reframe")}
    torch.save({**last, "model": ema, "weights": "ema", "config": older_config}, second)
    checkpoints = [model_dir / "checkpoint.pt", second]
    out, shipped = tmp_path / "averaged", tmp_path / "shipped" / "fer.safetensors"
    assert training_main(["export", *(f"--checkpoint={path}" for path in checkpoints), "--out", str(out),
                          "--save-weights", str(shipped)]) == 0
    exported, first = load_file(out / "weights.safetensors"), last["model"]
    assert not torch.equal(first["net.fc.1.weight"], ema["net.fc.1.weight"])
    assert all(torch.allclose(exported[name], (first[name].double() + ema[name].double()).div(2).float(), atol=1e-6)
               for name in exported if exported[name].is_floating_point())
    manifest = load_manifest(out)
    assert [(c.file, c.epoch, c.weights) for c in manifest.training.averaged] == [
        (str(checkpoints[0]), last["epoch"] + 1, last["weights"]), (str(second), last["epoch"] + 1, "ema")]
    # the average's own figures (not those of the run's best.pt), vouched for by the manifest
    assert manifest.validation.accuracy == json.loads(_evaluate(out))["accuracy"]
    assert {"metrics", "confusion_matrix", "confusion_plot"} <= set(manifest.artifacts)
    assert f"--checkpoint {checkpoints[0]} --checkpoint {second}" in shipped.with_name("fer.md").read_text()
    # another run's checkpoint is refused by name, with the setting that differs
    torch.save({**last, "config": {**last["config"], "lr": 1.0}}, tmp_path / "other.pt")
    capsys.readouterr()
    assert training_main(["export", f"--checkpoint={checkpoints[0]}", f"--checkpoint={tmp_path / 'other.pt'}",
                          "--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert "other.pt: not a checkpoint of the same run" in error and "config differs: lr" in error


def test_batch_norm_statistics_are_recomputed_on_the_faces_through_the_served_views(model_dir):
    state = torch.load(model_dir / "best.pt", weights_only=True)
    model = build_model("resnet18", TrainingConfig(**state["config"]).image_size, len(CLASSES))
    model.load_state_dict(state["model"])
    faces = load_split("synthetic:700", "train", state["input_size"]).images[:64]
    recompute_batch_norm(model, faces, "flip", batch_size=32)
    assert not model.training
    inputs = []  # what the first batch norm sees of the faces and their mirrors, in eval mode
    hook = model.net.bn1.register_forward_hook(lambda module, given, output: inputs.append(given[0]))
    with torch.no_grad():
        for view in views(faces.unsqueeze(1).numpy(), "flip"):
            model(torch.from_numpy(view.copy()))
    hook.remove()
    seen = torch.cat(inputs)
    assert torch.allclose(model.net.bn1.running_mean, seen.mean((0, 2, 3)), atol=1e-4)
    assert not torch.allclose(model.net.bn1.running_mean, state["model"]["net.bn1.running_mean"], atol=1e-3)


def test_export_gives_a_checkpoint_batch_norm_statistics_of_clean_training_faces(model_dir, tmp_path, capsys):
    best = model_dir / "best.pt"
    state = torch.load(best, weights_only=True)
    out, shipped = tmp_path / "bn", tmp_path / "shipped" / "bn.safetensors"
    assert training_main(["export", "--checkpoint", str(best), "--bn-faces", "500", "--out", str(out),
                          "--save-weights", str(shipped)]) == 0
    manifest, exported = load_manifest(out), load_file(out / "weights.safetensors")
    assert manifest.training.batch_norm_faces == 500
    assert [(c.file, c.epoch) for c in manifest.training.averaged] == [(str(best), state["epoch"] + 1)]
    assert torch.equal(exported["net.conv1.weight"], state["model"]["net.conv1.weight"])  # only the statistics
    assert not torch.allclose(exported["net.bn1.running_var"], state["model"]["net.bn1.running_var"], rtol=1e-3)
    assert manifest.validation.accuracy == json.loads(_evaluate(out))["accuracy"]  # of these weights, measured anew
    assert f"--checkpoint {best} --bn-faces 500 --out" in shipped.with_name("bn.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):  # shipped weights carry the statistics they were measured with
        training_main(["export", "--weights", str(shipped), "--bn-faces", "500", "--out", str(tmp_path / "no")])
    assert "use it with --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training_main(["export", "--checkpoint", str(best), "--bn-faces", "-1", "--out", str(tmp_path / "no")])
    assert "--bn-faces -1: a number of training faces" in capsys.readouterr().err


def test_corrupt_artifact_is_detected(model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"model.onnx \(onnx\) is corrupt"):
        load_manifest(copy)


def _write_folder(root, faces):
    """Class folders named in another case and created in reverse canonical order."""
    for name in reversed(CLASSES):
        (root / "val" / name.capitalize()).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(faces.images.numpy(), faces.labels.tolist())):
        Image.fromarray(image).save(root / "val" / CLASSES[label].capitalize() / f"{i}.png")


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_evaluate_on_image_folders_in_non_canonical_order(model_dir, tmp_path, capsys, backend):
    faces = load_split("synthetic:3500", "val")  # the training run's validation split
    _write_folder(tmp_path, faces)
    plots = tmp_path / "plots"
    assert training_main(["evaluate", "--model", str(model_dir), "--data", str(tmp_path), "--backend", backend,
                          "--plots", str(plots)]) == 0
    result = json.loads(capsys.readouterr().out)
    trained = json.loads((model_dir / "metrics.json").read_text())
    assert result["samples"] == 700 and abs(result["accuracy"] - trained["accuracy"]) < 0.005
    assert result["confusion_matrix"]["classes"] == list(CLASSES)
    assert (plots / "confusion_matrix_val.png").is_file()


def test_evaluate_with_test_time_augmentation(model_dir, capsys):
    assert training_main(["evaluate", "--model", str(model_dir), "--data", "synthetic:3500", "--tta", "crops"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] == "crops" and result["accuracy"] > 0.5


def test_resume_after_the_run_is_killed(tmp_path):
    command = [sys.executable, "-m", "training", "train", "--out", str(tmp_path), "--data", "synthetic:1400",
               "--image-size", "32", "--batch-size", "32", "--epochs", "3"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (tmp_path / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()  # preempted right after its first checkpoint
    process.wait()
    interrupted = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"]
    assert interrupted < 2, "the run finished before it could be interrupted"
    assert training_main(["train", "--out", str(tmp_path), "--data", "synthetic:1400", "--image-size", "32",
                          "--batch-size", "32", "--epochs", "3", "--resume"]) == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    with pytest.raises(SystemExit, match="--epochs 3 in the checkpoint, 5 now"):
        training_main(["train", "--out", str(tmp_path), "--data", "synthetic:1400", "--image-size", "32",
                       "--batch-size", "32", "--epochs", "5", "--resume"])
    with pytest.raises(SystemExit, match="--batch-size 32 in the checkpoint, 64 now; --mixup 0.0 in the checkpoint, "
                                         "0.2 now"):
        training_main(["train", "--out", str(tmp_path), "--data", "synthetic:1400", "--image-size", "32",
                       "--batch-size", "64", "--epochs", "3", "--mixup", "0.2", "--resume"])


def test_data_without_validation_split_holds_out_part_of_train(tmp_path):
    faces = load_split("synthetic:140", "train")
    rows = ["label,feature"] + [f"{label},{' '.join(map(str, image.flatten().tolist()))}"
                                for image, label in zip(faces.images.numpy(), faces.labels.tolist())]
    (tmp_path / "course.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert training_main(["train", "--out", str(out), "--data", str(tmp_path / "course.csv"), "--epochs", "1",
                          "--image-size", "32", "--batch-size", "32", "--val-fraction", "0.2"]) == 0
    assert json.loads((out / "metrics.json").read_text())["samples"] == 28


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    assert training_main(["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv:2: wrong pixel count 3" in capsys.readouterr().err


def test_distributed_training_with_torchrun_on_cpu(tmp_path):
    """Two processes (gloo) split every epoch, as DistributedDataParallel does across GPUs."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "training", "train", "--out", str(tmp_path), "--data", "synthetic:280", "--epochs", "1",
               "--image-size", "32", "--batch-size", "32", "--device", "cpu"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(tmp_path)
    assert manifest.training.world_size == 2



# --- shipped weights ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped(model_dir, tmp_path_factory):
    # Without VNNI onnxruntime's int8 kernels saturate and the export's accuracy gate rightly refuses int8 (this
    # tiny model lost 0.86 points on an AVX2-only CPU): the weights are shipped without it there.
    int8 = ["--int8"] if cpu_runs_int8_exactly() else []
    weights = tmp_path_factory.mktemp("shipped") / "fer.safetensors"
    assert training_main(["export", "--checkpoint", str(model_dir / "best.pt"), "--out",
                          str(tmp_path_factory.mktemp("exported")), *int8, "--save-weights", str(weights)]) == 0
    return weights


def test_export_from_shipped_weights_builds_a_verified_directory(shipped, model_dir, tmp_path):
    card = json.loads(shipped.with_name("fer.card.json").read_text())
    assert card["sha256"] == file_sha256(shipped) and card["architecture"] == "resnet18"
    evaluation = card["evaluation"]  # measured when the weights were written: fp16 loses nothing that matters
    assert abs(evaluation["accuracy_fp16_weights"] - evaluation["accuracy"]) <= 0.002
    assert "| happy |" in shipped.with_name("fer.md").read_text()
    assert shipped.stat().st_size < 25 * 1024 * 1024  # fp16
    out = tmp_path / "from-weights"
    assert training_main(["export", "--weights", str(shipped), "--out", str(out), "--data", "synthetic:350"]) == 0
    manifest = load_manifest(out)
    assert manifest.weights_source.sha256 == card["sha256"] and manifest.weights_source.file == str(shipped)
    assert manifest.validation.accuracy == card["validation"]["accuracy"] and manifest.tta == card["tta"]
    with make_client(out) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/model").json()["manifest"]["weights_source"]["sha256"] == card["sha256"]
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in out.iterdir() if path.is_file()), \
        "every file of a model directory must be readable by the service's user (a container's uid 10001)"
    # fp16 weights predict as the fp32 directory does, to the accuracy that matters
    fp32 = json.loads(_evaluate(model_dir))
    fp16 = json.loads(_evaluate(out))
    assert abs(fp32["accuracy"] - fp16["accuracy"]) <= 0.01


def test_shipped_weights_carry_a_temperature_per_tta_and_an_older_card_gets_the_missing_ones_fitted(shipped,
                                                                                                     tmp_path, capsys):
    card = json.loads(shipped.with_name("fer.card.json").read_text())
    shipped_temperatures = {c["tta"]: c["temperature"] for c in card["calibrations"]}
    assert sorted(shipped_temperatures) == ["crops", "flip", "none"]
    assert "| `flip` (served) |" in shipped.with_name("fer.md").read_text()
    out = tmp_path / "as-shipped"
    assert training_main(["export", "--weights", str(shipped), "--out", str(out)]) == 0  # no data: the card's own
    assert {c.tta: c.temperature for c in load_manifest(out).calibrations} == shipped_temperatures
    # A card written before 2026-12-06 holds one calibration, of its TTA: the others are fitted where data is given.
    older = tmp_path / "older"
    older.mkdir()
    for path in shipped.parent.iterdir():
        shutil.copy(path, older / path.name)
    card["calibration"] = next(c for c in card.pop("calibrations") if c["tta"] == card["tta"])
    (older / "fer.card.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert training_main(["export", "--weights", str(older / shipped.name), "--out", str(tmp_path / "bare")]) == 0
    assert "not calibrated for none, crops TTA" in capsys.readouterr().out
    assert [c.tta for c in load_manifest(tmp_path / "bare").calibrations] == ["flip"]
    assert training_main(["export", "--weights", str(older / shipped.name), "--out", str(tmp_path / "fitted"),
                          "--data", "synthetic:350"]) == 0
    fitted = load_manifest(tmp_path / "fitted")
    assert fitted.temperature("flip") == shipped_temperatures["flip"]  # the card's, not fitted again
    assert sorted(c.tta for c in fitted.calibrations) == ["crops", "flip", "none"]
    assert {c.split for c in fitted.calibrations} == {"val"}


def _evaluate(model_dir):
    result = subprocess.run([sys.executable, "-m", "training", "evaluate", "--model", str(model_dir), "--data",
                             "synthetic:3500"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(not cpu_runs_int8_exactly(), reason="this CPU has no VNNI: onnxruntime's int8 kernels saturate "
                                                         "and the export refuses int8")
def test_export_from_weights_without_data_makes_the_int8_model_that_was_measured_at_shipping(shipped, tmp_path,
                                                                                           capsys):
    """A fresh machine (`make serve`: no data) gets the int8 model of the card, with the card's accuracies, from the
    calibration shipped beside the weights; one that cannot be vouched for is not exported."""
    card = json.loads(shipped.with_name("fer.card.json").read_text())
    measured = card["quantization"]
    assert measured["tta"] == card["tta"] and measured["int8_sha256"] and measured["accuracy_int8"] > 0.5
    assert "## int8" in shipped.with_name("fer.md").read_text()
    out = tmp_path / "fresh"
    assert training_main(["export", "--weights", str(shipped), "--out", str(out)]) == 0
    manifest = load_manifest(out)
    assert manifest.quantization.model_dump() == measured
    assert file_sha256(out / "model.int8.onnx") == measured["int8_sha256"] == manifest.artifacts["onnx_int8"].sha256
    # Served as the manifest says: int8 when servable (forced here, whatever this tiny model measured), else fp32.
    from .images import face_bytes

    for servable, precision in ((True, "int8"), (False, "fp32")):
        manifest.quantization.servable = servable
        write_manifest(out, manifest)
        with make_client(out, backend="auto") as client:
            assert client.get("/model").json()["model"]["precision"] == precision
            answer = client.post("/predict", files=[("files", ("f.png", face_bytes(), "image/png"))]).json()
            assert answer["model"]["precision"] == precision
            assert answer["model"]["backend"] == "onnx" or precision == "fp32"  # int8 is the ONNX model
    # Another int8 model than the one measured (here: the card says another sha256): not exported, and said so.
    elsewhere = tmp_path / "weights"
    elsewhere.mkdir()
    for path in shipped.parent.iterdir():
        shutil.copy(path, elsewhere / path.name)
    card["quantization"]["int8_sha256"] = "0" * 64
    (elsewhere / "fer.card.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert training_main(["export", "--weights", str(elsewhere / shipped.name), "--out", str(tmp_path / "other")]) == 0
    assert "no int8 model" in capsys.readouterr().out
    assert load_manifest(tmp_path / "other").quantization is None and not (tmp_path / "other" / "model.int8.onnx").exists()


def test_precision_auto_serves_int8_only_where_the_export_allows_it(model_dir, monkeypatch, caplog):
    from schemas.manifest import QuantizationInfo
    from service.runtime import backends
    from service.runtime.backends import serving_precision

    monkeypatch.setattr(backends, "cpu_runs_int8_exactly", lambda: True)

    manifest = load_manifest(model_dir)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert serving_precision("auto", cpu, manifest, "auto") == "fp32"  # no int8 model at all
    measured = dict(split="val", samples=100, calibration_images=64, tta="flip", accuracy_fp32=0.7, accuracy_int8=0.699)
    with_int8 = manifest.model_copy(deep=True)
    with_int8.artifacts["onnx_int8"] = manifest.artifacts["onnx"]
    with_int8.quantization = QuantizationInfo(**measured, servable=True)
    assert serving_precision("auto", cpu, with_int8, "auto") == "int8"
    assert serving_precision("auto", cpu, with_int8, "onnx") == "int8"
    assert serving_precision("auto", cpu, with_int8, "torchscript") == "fp32"  # it cannot serve int8
    assert serving_precision("auto", cuda, with_int8, "auto") == "fp32"
    assert serving_precision("fp32", cpu, with_int8, "auto") == "fp32"
    with_int8.quantization = QuantizationInfo(**measured)  # too far from fp32, or measured before `servable` existed
    assert serving_precision("auto", cpu, with_int8, "auto") == "fp32"
    assert serving_precision("int8", cpu, with_int8, "auto") == "int8"  # asked for: served
    with_int8.quantization = QuantizationInfo(**measured, servable=True)
    monkeypatch.setattr(backends, "cpu_runs_int8_exactly", lambda: False)  # no VNNI: int8 would saturate
    assert serving_precision("auto", cpu, with_int8, "auto") == "fp32"
    assert serving_precision("int8", cpu, with_int8, "auto") == "int8"  # asked for: served, with a warning
    warned = [record for record in caplog.records if record.name == backends.logger.name]
    assert [record.levelname for record in warned] == ["WARNING"] and "without VNNI or AMX" in warned[0].getMessage()


@pytest.mark.parametrize("damage", ["missing", "truncated", "tampered", "no card"])
def test_bad_weights_file_stops_with_a_message_naming_it(shipped, tmp_path, capsys, damage):
    weights = tmp_path / "fer.safetensors"
    shutil.copy(shipped, weights)
    shutil.copy(shipped.with_name("fer.card.json"), tmp_path / "fer.card.json")
    data = bytearray(weights.read_bytes())
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "tampered":
        data[-100] ^= 0x01
        weights.write_bytes(bytes(data))
    else:
        (tmp_path / "fer.card.json").unlink()
    assert training_main(["export", "--weights", str(weights), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    expected = {"missing": "weights file not found", "truncated": "truncated or was changed",
                "tampered": "truncated or was changed", "no card": "model card of fer.safetensors is missing"}[damage]
    assert "fer." in error and expected in error and "Traceback" not in error


def test_training_fine_tunes_shipped_weights_at_a_larger_side(shipped, tmp_path, capsys):
    # one epoch at learning rate 0: the run's parameters are the shipped ones, seen at a larger side
    short = ["--data", "synthetic:700", "--epochs", "1", "--image-size", "40", "--batch-size", "64", "--lr", "0",
             "--ema-decay", "0"]
    assert training_main(["train", "--out", str(tmp_path / "tuned"), "--weights", str(shipped), *short]) == 0
    tuned = load_manifest(tmp_path / "tuned")
    assert tuned.training.weights == str(shipped) and tuned.training.image_size == 40
    start, end = load_file(shipped), load_file(tmp_path / "tuned" / "weights.safetensors")
    parameters = [name for name in start if name.endswith((".weight", ".bias"))]
    assert len(parameters) > 40 and all(torch.equal(start[name].float(), end[name]) for name in parameters)
    # the lineage is recorded when the run begins and goes into the card of the weights shipped from it
    card = json.loads(shipped.with_name("fer.card.json").read_text())
    assert tuned.training.parent.sha256 == card["sha256"] and tuned.training.parent.training.image_size == 32
    again = tmp_path / "shipped" / "fer.safetensors"
    assert training_main(["export", "--checkpoint", str(tmp_path / "tuned" / "best.pt"), "--out",
                          str(tmp_path / "exported"), "--save-weights", str(again)]) == 0
    assert json.loads(again.with_name("fer.card.json").read_text())["training"]["parent"]["sha256"] == card["sha256"]
    model_card = again.with_name("fer.md").read_text()
    assert "trained from scratch on FER2013, then fine-tuned" in model_card and card["sha256"][:16] in model_card
    assert "--epochs 5 --image-size 32" in model_card and "--image-size 40" in model_card  # both steps' commands
    # weights of other classes are refused by name, before any training
    card = json.loads(shipped.with_name("fer.card.json").read_text())
    shutil.copy(shipped, tmp_path / "fer.safetensors")
    (tmp_path / "fer.card.json").write_text(json.dumps({**card, "classes": list(reversed(card["classes"]))}))
    capsys.readouterr()
    assert training_main(["train", "--out", str(tmp_path / "other"), "--weights", str(tmp_path / "fer.safetensors"),
                          *short]) == 2
    error = capsys.readouterr().err
    assert "fer.safetensors" in error and "cannot initialise" in error and "Traceback" not in error
    assert not (tmp_path / "other").exists()  # refused before the data is read or anything is written


def test_export_interpolates_a_fine_tuned_run_with_its_parent_weights(shipped, model_dir, tmp_path, capsys):
    parent = tmp_path / "parent" / "fer.safetensors"  # a copy, as a run's parent is kept
    parent.parent.mkdir()
    for file in (shipped, shipped.with_name("fer.card.json")):
        shutil.copy(file, parent.parent / file.name)
    run = tmp_path / "tuned"
    assert training_main(["train", "--out", str(run), "--weights", str(parent), "--data", "synthetic:700", "--epochs",
                          "1", "--image-size", "32", "--batch-size", "64", "--lr", "1e-3"]) == 0
    out, again = tmp_path / "wise", tmp_path / "shipped" / "wise.safetensors"
    assert training_main(["export", "--checkpoint", str(run / "best.pt"), "--parent-weight", "0.5", "--out", str(out),
                          "--save-weights", str(again)]) == 0
    tuned, start, mixed = (torch.load(run / "best.pt", weights_only=True)["model"], load_file(parent),
                           load_file(out / "weights.safetensors"))
    assert not torch.equal(tuned["net.fc.1.weight"], start["net.fc.1.weight"].float())
    assert all(torch.allclose(mixed[name], (tuned[name].double() + start[name].double()).div(2).float(), atol=1e-6)
               for name in mixed if mixed[name].is_floating_point())
    manifest = load_manifest(out)
    assert manifest.training.parent_weight == 0.5
    capsys.readouterr()
    assert training_main(["evaluate", "--model", str(out), "--data", "synthetic:700"]) == 0
    assert manifest.validation.accuracy == json.loads(capsys.readouterr().out)["accuracy"]  # of the mixed weights
    assert [(c.file, c.epoch) for c in manifest.training.averaged] == [(str(run / "best.pt"), 1)]
    assert f"--checkpoint {run / 'best.pt'} --parent-weight 0.5 --out" in again.with_name("wise.md").read_text()
    # a run trained from scratch has no parent; a parent replaced in place since the run is not the parent
    assert training_main(["export", "--checkpoint", str(model_dir / "best.pt"), "--parent-weight", "0.5", "--out",
                          str(tmp_path / "orphan")]) == 2
    assert "has no parent to interpolate with" in capsys.readouterr().err
    assert training_main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "replaced"),
                          "--save-weights", str(parent)]) == 0
    capsys.readouterr()
    assert training_main(["export", "--checkpoint", str(run / "best.pt"), "--parent-weight", "0.5", "--out",
                          str(tmp_path / "stale")]) == 2
    assert "the file was replaced since" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training_main(["export", "--checkpoint", str(run / "best.pt"), "--parent-weight", "1.5", "--out",
                       str(tmp_path / "bad")])
    assert "--parent-weight 1.5" in capsys.readouterr().err


def test_too_small_a_data_set_is_a_clear_error(tmp_path, capsys):
    faces = load_split("synthetic:14", "train")
    rows = ["label,feature"] + [f"{label},{' '.join(map(str, image.flatten().tolist()))}"
                                for image, label in zip(faces.images.numpy()[:1], faces.labels.tolist())]
    (tmp_path / "one.csv").write_text("\n".join(rows) + "\n")
    assert training_main(["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "one.csv")]) == 2
    assert "fewer than one batch of 128" in capsys.readouterr().err
    assert training_main(["train", "--out", str(tmp_path / "run"), "--data", "synthetic:100", "--batch-size",
                          "200"]) == 2
    assert "100 training image(s) is fewer than one batch of 200; use more data or a smaller --batch-size" \
        in capsys.readouterr().err


def test_precision_follows_the_cpus_bf16_instructions(monkeypatch, tmp_path):
    from training import train as train_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: False)
    assert train_module.training_precision("auto", cpu) == "fp32"
    assert train_module.training_precision("bf16", cpu) == "bf16"  # an explicit choice wins
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: True)
    assert train_module.training_precision("auto", cpu) == "bf16"
    assert train_module.training_precision("auto", torch.device("cuda")) == "bf16"
    # the bf16 path itself runs on this CPU (emulated where it lacks the instructions) and is recorded
    out = tmp_path / "bf16"
    assert training_main(["train", "--out", str(out), "--data", "synthetic:140", "--epochs", "1", "--image-size",
                          "32", "--batch-size", "32"]) == 0
    training = load_manifest(out).training
    assert (training.precision, training.channels_last) == ("bf16", True)


def test_consistency_training_records_its_weight_and_reframing_and_resumes_only_with_them(tmp_path, capsys):
    command = ["train", "--out", str(tmp_path), "--data", "synthetic:140", "--epochs", "1", "--image-size", "32",
               "--batch-size", "32", "--reframe-scale", "0.78", "1.28", "--reframe-shift", "0.095",
               "--consistency", "12"]
    assert training_main(command) == 0
    training = load_manifest(tmp_path).training
    assert (training.consistency, training.reframe_scale, training.reframe_shift, training.reframe_rotation) == (
        12, (0.78, 1.28), 0.095, 8.0)
    assert ("--consistency 12.0 --reframe-scale 0.78 1.28 --reframe-shift 0.095 --reframe-rotation 8.0 --ema-decay"
            in training_command(training.model_dump()))
    with pytest.raises(SystemExit, match="--consistency 12.0 in the checkpoint, 0.0 now"):
        training_main(command[:-2] + ["--resume"])
    with pytest.raises(SystemExit, match=r"--reframe-scale \(0.78, 1.28\) in the checkpoint, \(0.85, 1.18\) now"):
        training_main(command[:11] + command[14:] + ["--resume"])
    with pytest.raises(SystemExit):
        training_main(command[:-1] + ["-1"])
    assert "--consistency -1.0: Input should be greater than or equal to 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training_main(command[:12] + ["1.2", "0.9"] + command[14:])
    assert "--reframe-scale 1.2 0.9: LOW <= HIGH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training_main(command + ["--reframe-rotation", "-2"])
    assert "--reframe-rotation -2.0: Input should be greater than or equal to 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="LOW <= HIGH"):
        TrainingConfig(**{**training.model_dump(), "reframe_scale": (1.2, 0.9)})
    # Cards written before the ranges could be chosen read as the ranges those runs used, and their command
    # leaves them to the defaults; without --consistency the ranges are not part of the command.
    older = {name: value for name, value in training.model_dump().items() if not name.startswith("reframe")}
    assert TrainingConfig(**older).reframe_scale == (0.85, 1.18)
    assert "--consistency 12.0 --ema-decay" in training_command(older)
    assert "--reframe" not in training_command({**training.model_dump(), "consistency": 0.0})


def test_distillation_loss_is_zero_only_where_the_student_agrees_with_its_teacher():
    from training.train import distillation

    logits = torch.randn(16, 7)
    assert distillation(logits, logits, 2.0).abs() < 1e-6
    assert distillation(logits, logits + 5.0, 2.0).abs() < 1e-6  # a softmax does not see a shift
    assert distillation(logits, torch.randn(16, 7), 2.0) > 0.01
    # by hand, two classes: the teacher says 3:1 (1.73:1 softened by 2), the student 1:1; T² x KL(teacher || student)
    for temperature in (1.0, 2.0):
        odds = 3 ** (1 / temperature)
        teacher = [odds / (odds + 1), 1 / (odds + 1)]
        expected = temperature ** 2 * sum(p * math.log(p / 0.5) for p in teacher)
        loss = distillation(torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]]), temperature)
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_training_distils_a_teacher_records_it_and_resumes_only_with_it(shipped, tmp_path, capsys):
    short = ["--data", "synthetic:700", "--epochs", "1", "--image-size", "40", "--batch-size", "64", "--ema-decay", "0"]
    taught = ["train", "--out", str(tmp_path / "taught"), "--teacher", str(shipped), "--distill", "1", *short]
    assert training_main(taught) == 0
    assert training_main(["train", "--out", str(tmp_path / "alone"), *short]) == 0
    card = json.loads(shipped.with_name("fer.card.json").read_text())
    training = load_manifest(tmp_path / "taught").training
    assert (training.teacher, training.distill, training.distill_temperature) == (str(shipped), 1.0, 2.0)
    assert training.teacher_weights.sha256 == card["sha256"] and training.teacher_weights.training.image_size == 32
    assert training.parent is None  # the teacher is not the starting point: the student starts from scratch
    # with --distill 1 the labels do not count: the same seed and data learn other weights than without a teacher
    taught_weights, alone_weights = (load_file(tmp_path / run / "weights.safetensors") for run in ("taught", "alone"))
    assert not torch.equal(taught_weights["net.fc.1.weight"], alone_weights["net.fc.1.weight"])
    assert f"--teacher {shipped} --distill 1.0 --distill-temperature 2.0 --ema-decay" in training_command(
        training.model_dump())
    assert "--distill" not in training_command(load_manifest(tmp_path / "alone").training.model_dump())
    again = tmp_path / "shipped" / "taught.safetensors"
    assert training_main(["export", "--checkpoint", str(tmp_path / "taught" / "best.pt"), "--out",
                          str(tmp_path / "exported"), "--save-weights", str(again)]) == 0
    model_card = again.with_name("taught.md").read_text()
    assert f"softened predictions of `fer.safetensors` (sha256 `{card['sha256'][:16]}" in model_card
    assert "knowledge distillation, weight 1, temperature 2" in model_card
    with pytest.raises(SystemExit, match="--distill 1.0 in the checkpoint, 0.5 now"):
        training_main(taught[:5] + short + ["--resume"])
    with pytest.raises(SystemExit, match="--teacher .*fer.safetensors' in the checkpoint, 'none' now"):
        training_main(["train", "--out", str(tmp_path / "taught"), *short, "--resume"])
    # distillation's settings without a teacher, a teacher that is not shipped weights or not over these classes:
    # refused by name before any work
    with pytest.raises(SystemExit):
        training_main(["train", "--out", str(tmp_path / "bad"), "--distill", "0.7", *short])
    assert "--distill applies to a --teacher (none given)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training_main(["train", "--out", str(tmp_path / "bad"), "--teacher", "model.pt", *short])
    assert "--teacher model.pt: shipped FER weights NAME.safetensors" in capsys.readouterr().err
    shutil.copy(shipped, tmp_path / "fer.safetensors")
    (tmp_path / "fer.card.json").write_text(json.dumps({**card, "classes": list(reversed(card["classes"]))}))
    assert training_main(["train", "--out", str(tmp_path / "other"), "--teacher", str(tmp_path / "fer.safetensors"),
                          *short]) == 2
    assert "cannot teach a run over" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_weight_ema_warms_up_so_short_runs_are_not_averaged_with_their_initial_weights():
    from training.train import ema_average

    average = ema_average(0.998)
    start, current = torch.zeros(3), torch.ones(3)
    assert torch.allclose(average(start, current, torch.tensor(0)), torch.full((3,), 0.9))  # rate 1/10 at first
    assert torch.allclose(average(start, current, torch.tensor(10 ** 6)), torch.full((3,), 0.002))  # then the decay


SHIPPED = ROOT / "training" / "pretrained" / "fer2013-resnet18.safetensors"


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"no shipped weights at {SHIPPED}")
def test_the_shipped_weights_are_the_ones_their_card_vouches_for():
    from training.shipped import card_path, load_shipped_weights

    model, card = load_shipped_weights(SHIPPED)  # verifies the sha256 and that the weights fit the architecture
    assert card["file"] == SHIPPED.name and SHIPPED.stat().st_size <= 25 * 1024 * 1024
    assert card_path(SHIPPED).is_file() and SHIPPED.with_suffix(".md").is_file()
    evaluation = card["evaluation"]
    assert evaluation["accuracy"] - evaluation["accuracy_fp16_weights"] <= 0.001  # fp16 loses <= 0.1 points
    assert card["classes"] == list(CLASSES) and model.num_classes == len(CLASSES)


def test_a_training_option_is_one_declaration_seen_by_the_parser_the_manifest_and_the_card(model_dir, capsys):
    import argparse

    from schemas.manifest import option
    from training.options import add_options, command, config_from_args, option_names

    class Extended(TrainingConfig):
        warp: float = option(0.25, "a new augmentation's strength", ge=0, le=1)

    parser = argparse.ArgumentParser()
    add_options(parser, Extended)
    assert "a new augmentation's strength (default: 0.25)" in parser.format_help()
    config = config_from_args(parser, parser.parse_args(["--warp", "0.5", "--epochs", "3"]), Extended)
    assert (config.warp, config.epochs) == (0.5, 3)
    assert "--epochs 3 " in command(config.model_dump(), Extended)
    assert command(config.model_dump(), Extended).endswith("--tta flip --warp 0.5")
    with pytest.raises(SystemExit):
        config_from_args(parser, parser.parse_args(["--warp", "2"]), Extended)
    assert "--warp 2.0: Input should be less than or equal to 1" in capsys.readouterr().err
    # The manifest's training config is the parsed config itself: every declared option is recorded.
    recorded = json.loads((model_dir / "manifest.json").read_text())["training"]
    assert set(option_names()) <= set(recorded)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from training.train import build_scheduler

    config = TrainingConfig(epochs=4, schedule="cosine", warmup_epochs=1, lr=0.1, optimizer="sgd")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    rates = []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.01) and rates[9] == pytest.approx(0.1)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 0.001
    resumed = build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr), config, 10)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_training_imports_neither_the_http_service_nor_face_detection():
    code = ("import sys, training.train, training.export, training.report; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'prometheus_client', 'cv2', 'requests', "
            "'pydantic_settings') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.strip() == "[]"
