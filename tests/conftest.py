"""Shared fixtures: one small model trained on synthetic faces for the whole session (seconds on a CPU)."""

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from training.__main__ import main as training_main

ROOT = Path(__file__).resolve().parents[1]
FER2013 = ROOT.parent / "shared" / "data" / "fer2013"
needs_fer2013 = pytest.mark.skipif(not (FER2013 / "val").is_dir(),
                                   reason=f"FER2013 is not at {FER2013} (see ../shared/data/README.md)")

# Sized to finish within about a minute on 2 CPU cores.
SYNTHETIC_TRAINING = ["--data", "synthetic:3500", "--epochs", "5", "--image-size", "32", "--batch-size", "64",
                      "--lr", "3e-3", "--seed", "0"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run")
    started = time.perf_counter()
    assert training_main(["train", "--out", str(out), *SYNTHETIC_TRAINING]) == 0
    return {"dir": out, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="session")
def model_dir(trained_run) -> Path:
    return trained_run["dir"]


def make_client(model_dir: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(**{"model_dir": model_dir, "device": "cpu", "backend": "torchscript",
                                              **settings})))


@pytest.fixture(scope="session")
def client(model_dir):
    with make_client(model_dir, max_request_bytes=4 * 1024 * 1024, max_images_per_request=16,
                     max_image_pixels=20_000_000, batch_wait_ms=20) as test_client:
        yield test_client
