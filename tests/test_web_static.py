"""The web page's files and the offline API docs, without a browser or a model (tests/test_web.py drives a browser)."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.web import STATIC_DIR

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
ASSET_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url|Url)\s*:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    # Not entered as a context manager: the lifespan, which loads a model, does not run; static routes need none.
    return TestClient(create_app(Settings(model_dir=tmp_path_factory.mktemp("no-model"), device="cpu")))


def test_page_and_its_assets_are_served(app_client):
    page = app_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = [a or b for a, b in ASSET_URL.findall(page.text)]
    assert {"/static/app.js", "/static/app.css", "/static/favicon.svg", "/docs"} <= set(assets)
    for url in assets:
        assert app_client.get(url).status_code == 200, url
    assert app_client.get("/static/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert app_client.get("/static/nothing.js").status_code == 404


@pytest.mark.parametrize("path", ["index.html", "app.js", "app.css", "favicon.svg"])
def test_page_files_name_no_external_url(path):
    # Only the SVG namespace identifier is a URL, and browsers never fetch it.
    text = (STATIC_DIR / path).read_text().replace("http://www.w3.org/2000/svg", "")
    assert not EXTERNAL_URL.findall(text)


def test_api_docs_load_nothing_from_outside(app_client):
    page = app_client.get("/docs")
    assert page.status_code == 200
    assert not EXTERNAL_URL.findall(page.text), "/docs references an external URL"
    assets = [a or b for a, b in ASSET_URL.findall(page.text)]
    assert assets and all(url.startswith("/") for url in assets)
    for url in assets:
        assert app_client.get(url).status_code == 200, url
    assert app_client.get("/redoc").status_code == 404  # ReDoc always fetches a logo from its CDN


def test_wheel_carries_the_page(tmp_path):
    """A non-editable install (the Docker images) must ship service/static and the routers."""
    source = tmp_path / "source"  # built from a copy: setuptools leaves build/ and *.egg-info where it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("schemas", "service", "training"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "wheel"), str(source)], check=True, timeout=120)
    names = zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))).namelist()
    for path in STATIC_DIR.iterdir():
        assert f"service/static/{path.name}" in names
    assert "service/routers/predict.py" in names
