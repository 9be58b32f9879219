"""`python -m training report`: the course report's five answers and its derivations, for any model directory."""

import re

from training.__main__ import main as training_main


def test_report_answers_the_five_questions_with_the_derivations_passing(model_dir, tmp_path):
    out = tmp_path / "report.html"
    assert training_main(["report", "--model", str(model_dir), "--data", "synthetic:350", "--out", str(out),
                          "--steps", "4"]) == 0
    page = out.read_text()
    titles = re.findall(r"<h2>([^<]*)</h2>", page)
    assert [title.split(".")[0] for title in titles[:5]] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    assert "Derivations, checked on the network" in titles
    checks = re.findall(r"<h3>[^<]*\((passes|FAILS)[^<]*</h3>", page)
    assert checks == ["passes", "passes", "passes"]
    assert "is most often taken for" in page and "The easiest classes are" in page
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert len(images) >= 5 and "src=\"http" not in page  # self-contained: every figure embedded
    assert "layer4.1.conv2" in page and "conv1 kernels" in page
