"""`python -m training report`: the course report's five answers and its derivations, for any model directory."""

import re
import shutil

from service.runtime.modeldir import load_manifest
from tests.conftest import make_client
from training.__main__ import main as training_main


def test_report_answers_the_five_questions_with_the_derivations_passing(model_dir, tmp_path):
    out = tmp_path / "report.html"
    assert training_main(["report", "--model", str(model_dir), "--data", "synthetic:350", "--out", str(out),
                          "--steps", "4"]) == 0
    page = out.read_text()
    titles = re.findall(r"<h2>([^<]*)</h2>", page)
    assert titles[0] == "The model"
    assert [title.split(".")[0] for title in titles[1:6]] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    assert "Derivations, checked on the network" in titles
    checks = re.findall(r"<h3>[^<]*\((passes|FAILS)[^<]*</h3>", page)
    assert checks == ["passes", "passes", "passes"]
    assert "is most often taken for" in page and "The easiest classes are" in page
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert len(images) >= 5 and "src=\"http" not in page  # self-contained: every figure embedded
    assert "layer4.1.conv2" in page and "conv1 kernels" in page
    assert "Accuracy " in page and "precision" in page  # the model card with its per-class figures


def test_stored_report_is_what_the_service_serves(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    with make_client(copy) as client:
        missing = client.get("/model/report")
    assert missing.status_code == 404 and "python -m training report" in missing.json()["detail"]

    assert training_main(["report", "--model", str(copy), "--data", "synthetic:350", "--steps", "4"]) == 0
    manifest = load_manifest(copy)  # verifies the report's sha256 with every other artifact
    stored = (copy / manifest.artifacts["report"].path).read_text()
    with make_client(copy) as client:
        served = client.get("/model/report")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
    assert served.text == stored and "Q5. What the filters respond to" in stored

    # Stored again (SmoothGrad's noise makes every page differ): the directory still loads, with the new page.
    assert training_main(["report", "--model", str(copy), "--data", "synthetic:350", "--steps", "5"]) == 0
    assert load_manifest(copy).artifacts["report"].sha256 != manifest.artifacts["report"].sha256
