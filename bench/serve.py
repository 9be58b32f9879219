"""`make bench-serve`: start the real server (uvicorn) and measure it with a separate load generator.

For each server configuration (dynamic batching on, then `max batch = 1`), every load: concurrencies x
images per request for /predict (face crops, `faces=none`), a fixed-rate single-image run, and /saliency.
Prints a table and writes bench/results/serve-<device>.json. `--compare`: side by side with bench/baseline.py.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
SALIENCY_IMAGES = 8  # per /saliency request, computed as one batch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, env: dict, module: str = "service", root: Path = ROOT) -> subprocess.Popen:
    """`python -m module` of the checkout at `root` (this one by default), once it answers /readyz."""
    arguments = ["--host", "127.0.0.1"] if module == "service" else []
    process = subprocess.Popen([sys.executable, "-m", module, "--model", str(model), *arguments, "--port", str(port)],
                               cwd=root, env={**os.environ, "FER_LOG_LEVEL": "warning", **env})  # -m imports from cwd
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not become ready in 180 s")


@contextmanager
def serving(model: Path, env: dict, module: str = "service",
            root: Path = ROOT) -> Iterator[tuple[str, subprocess.Popen]]:
    """A ready server (`start_server` on a free port) as its base URL and process, stopped on leaving."""
    port = free_port()
    server = start_server(model, port, env, module, root)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.terminate()
        server.wait(60)


def load(url: str, duration: float, **options) -> dict:
    command = [sys.executable, "-m", "bench.load", "--url", url, "--duration", str(duration)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 32], help="images per request")
    parser.add_argument("--rate", type=float, help="single-image requests/s of the fixed-rate run "
                                                   "(default 1000 on CUDA, 150 on the CPU)")
    parser.add_argument("--max-batch", type=int, default=None, help="max batch size with batching on "
                                                                    "(default 256 on CUDA, 64 on the CPU)")
    parser.add_argument("--backend", help="FER_BACKEND of this service (default torchscript; with --defaults, the "
                                          "service's default)")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"],
                        help="FER_PRECISION of this service (default fp32; with --defaults, the service's default; "
                             "int8: the ONNX int8 artifact, with --backend onnx or auto)")
    parser.add_argument("--defaults", action="store_true",
                        help="what a user gets, in one run: face crops under the defaults (faces=auto, the manifest's "
                             "TTA) against faces=none with the mean batch of each load, 640x480 photos of 1 and 4 "
                             "people at c=8, and the served artifact's own ceiling")
    parser.add_argument("--rounds", type=lambda text: max(1, int(text)), default=3,
                        help="with --defaults: rounds of the crop loads, faces=auto and none in turn first")
    parser.add_argument("--before", type=Path,
                        help="with --defaults: also run the photo loads against the checkout in this directory "
                             "(e.g. `git worktree add DIR COMMIT`), for a before/after in the same run")
    parser.add_argument("--compare", action="store_true",
                        help="side by side with the plain FastAPI baseline (bench/baseline.py), fp32, no TTA")
    args = parser.parse_args()
    if args.defaults:
        return defaults(args)
    args.backend, args.precision = args.backend or "torchscript", args.precision or "fp32"
    if args.compare:
        return compare(args)
    cuda = torch.cuda.is_available()
    rate = args.rate or (1000 if cuda else 150)
    device = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    configurations = {"batching": {"FER_MAX_BATCH_SIZE": str(args.max_batch or (256 if cuda else 64)),
                                   "FER_BATCH_WAIT_MS": "2"},
                      "max batch = 1": {"FER_MAX_BATCH_SIZE": "1", "FER_BATCH_WAIT_MS": "0"}}
    rows = []
    for name, env in configurations.items():
        with serving(args.model, {**env, "FER_BACKEND": args.backend, "FER_PRECISION": args.precision,
                                  "FER_MAX_IMAGES_PER_REQUEST": str(max(*args.images, SALIENCY_IMAGES))}) as (url, _):
            for images in args.images:
                for concurrency in args.concurrency:
                    rows.append({"server": name, "endpoint": "/predict", "images": images, "load": f"c={concurrency}",
                                 **load(f"{url}/predict?faces=none", args.duration, images=images,
                                        concurrency=concurrency)})
                    print_row(rows[-1])
            rows.append({"server": name, "endpoint": "/predict", "images": 1, "load": f"{rate:g} req/s",
                         **load(f"{url}/predict?faces=none", args.duration, images=1, rate=rate)})
            print_row(rows[-1])
            if name == "batching":
                for method in ("vanilla", "gradcam"):
                    rows.append({"server": name, "endpoint": f"/saliency?method={method}", "images": SALIENCY_IMAGES, "load": "c=4",
                                 **load(f"{url}/saliency?method={method}&format=png&faces=none", args.duration, images=SALIENCY_IMAGES,
                                        concurrency=4)})
                    print_row(rows[-1])
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serve-{'cuda' if cuda else 'cpu'}.json"
    path.write_text(json.dumps({"device": device, "backend": args.backend, "precision": args.precision,
                                "model": str(args.model), "rows": rows},
                               indent=1))
    print(f"device: {device}; written to {path}")


# The load shapes of the side-by-side comparison: (images per request, concurrency).
COMPARE_SHAPES = ((1, 32), (32, 4))


def compare(args) -> None:
    """The same loads against the plain baseline and this service (default settings but TTA off, so both compute
    one forward pass per image), in one run; prints the ratio per load shape."""
    servers = {"plain FastAPI": ("bench.baseline", {}),
               "this service": ("service", {"FER_BACKEND": args.backend, "FER_PRECISION": args.precision,
                                            "FER_TTA": "none"})}
    results = {}
    for name, (module, env) in servers.items():
        with serving(args.model, env, module) as (url, _):
            for images, concurrency in COMPARE_SHAPES:
                row = {"server": name, "endpoint": "/predict", "images": images, "load": f"c={concurrency}",
                       **load(f"{url}/predict?faces=none", args.duration, images=images, concurrency=concurrency)}
                results[name, images] = row
                print_row(row)
    for images, concurrency in COMPARE_SHAPES:
        ratio = results["this service", images]["images_per_s"] / results["plain FastAPI", images]["images_per_s"]
        print(f"{images} image(s)/request at c={concurrency}: this service / plain FastAPI = {ratio:.2f}x")


def mean_batch(url: str) -> tuple[float, float]:
    """(images, forward passes) so far, from the server's batch-size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    read = lambda name: sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))  # noqa: E731
    return read("fer_batch_size_sum"), read("fer_batch_size_count")


PHOTO_CONCURRENCY = 8


def defaults(args) -> None:
    """Under the defaults, on one server: face crops with `faces=auto` and with `faces=none`, photos of 1 and 4
    people, then (the server stopped) the artifact called directly with the served TTA; with --before, the photo
    loads against that checkout too."""
    results = {}
    env = {name: value for name, value in (("FER_BACKEND", args.backend), ("FER_PRECISION", args.precision)) if value}
    with serving(args.model, env) as (url, _):
        served = httpx.get(f"{url}/model", timeout=10).json()["model"]
        print(f"serving: backend {served['backend']}, precision {served.get('precision')}, tta {served['tta']}")
        # auto and none alternate, in turn first, round after round: one load after the other drifted by more
        # than the 10 % the two are to be within (the first load of a fresh server was the slower)
        for images, concurrency in COMPARE_SHAPES:
            for turn in range(args.rounds):
                for faces in ("auto", "none") if turn % 2 == 0 else ("none", "auto"):
                    before = mean_batch(url)
                    row = {"server": f"faces={faces}", "endpoint": "/predict", "images": images,
                           "load": f"c={concurrency}",
                           **load(f"{url}/predict?faces={faces}", args.duration, images=images, concurrency=concurrency)}
                    after = mean_batch(url)
                    row["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
                    results.setdefault((faces, images), []).append(row)
                    print_row(row)
                    print(f"{'':>14} mean batch {row['mean_batch']:.1f} images per forward pass")
        photo_rows = photo_loads(url, "this checkout", args.duration)
    for images, concurrency in COMPARE_SHAPES:
        ratios = [auto["images_per_s"] / none["images_per_s"]
                  for auto, none in zip(results["auto", images], results["none", images])]
        print(f"{images} image(s)/request at c={concurrency}: defaults / faces=none = "
              f"{statistics.median(ratios):.2f}x (median of {len(ratios)} rounds: "
              f"{', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    if args.before:
        with serving(args.model.resolve(), env, root=args.before) as (url, _):  # the model from its own cwd
            before_rows = photo_loads(url, f"before ({args.before.name})", args.duration)
        for faces in (1, 4):
            ratio = photo_rows[faces]["images_per_s"] / before_rows[faces]["images_per_s"]
            print(f"640x480 photos of {faces} at c={PHOTO_CONCURRENCY}: this checkout / before = {ratio:.2f}x")
    backend, precision = served["backend"], served.get("precision", "fp32")
    print(f"ceiling of the served artifact ({backend}, {precision}, batch 64, the manifest's TTA, no HTTP): "
          f"{ceiling(args.model, backend, precision):.0f} faces/s")


def photo_loads(url: str, server: str, duration: float) -> dict[int, dict]:
    """640x480 photos of 1 and 4 people under the defaults at c=8: photos/s, and faces/s from the faces each answer
    holds (checked on one request first)."""
    from bench.load import photo_body

    rows = {}
    for faces in (1, 4):
        body, headers = photo_body(faces)
        answer = httpx.post(f"{url}/predict", content=body, headers=headers, timeout=60).json()
        found = len(answer["predictions"][0]["faces"])
        row = {"server": server, "endpoint": f"/predict {faces}-face photo", "images": 1,
               "load": f"c={PHOTO_CONCURRENCY}", **load(f"{url}/predict", duration, photo_faces=faces,
                                                      concurrency=PHOTO_CONCURRENCY)}
        print_row(row)
        print(f"{'':>14} {found} of {faces} faces found per photo: {row['images_per_s'] * found:.1f} faces/s")
        rows[faces] = row
    return rows


def ceiling(model: Path, backend: str, precision: str) -> float:
    """Faces per second of the served artifact called in this process at batch 64, with the manifest's TTA."""
    import numpy as np

    from service.runtime.backends import load_backend
    from service.runtime.modeldir import load_manifest
    from service.runtime.tta import predict_with_tta

    manifest = load_manifest(model)
    served, _ = load_backend(model, manifest, backend, torch.device("cpu"), precision, 64)
    faces = np.random.default_rng(0).integers(0, 256, (64, 1, manifest.input.height, manifest.input.width), np.uint8)
    predict = lambda: predict_with_tta(served.predict, faces, manifest.tta, manifest.temperature(manifest.tta))  # noqa: E731
    for _ in range(3):
        predict()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < 5:
        predict()
        calls += 1
    return calls * len(faces) / (time.perf_counter() - started)


def print_row(row: dict) -> None:
    print(f"{row['server']:>14} {row['endpoint']:<26} {row['images']:>3} img/req {row['load']:>12}: "
          f"{row['images_per_s']:>9.1f} img/s {row['requests_per_s']:>8.1f} req/s  p50 {row['p50_ms']:>7.1f} ms  "
          f"p95 {row['p95_ms']:>7.1f} ms  p99 {row['p99_ms']:>7.1f} ms  errors {row['errors']}", flush=True)


if __name__ == "__main__":
    main()
