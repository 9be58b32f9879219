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
        command += [f"--{key}", str(value)]
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
    parser.add_argument("--backend", default="torchscript")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                        help="FER_PRECISION of this service (int8: the ONNX int8 artifact, with --backend onnx "
                             "or auto)")
    parser.add_argument("--defaults", action="store_true",
                        help="face crops as a user sends them (faces=auto, the manifest's TTA) against faces=none on "
                             "the same server, in one run, with the mean batch of each load")
    parser.add_argument("--compare", action="store_true",
                        help="side by side with the plain FastAPI baseline (bench/baseline.py), fp32, no TTA")
    args = parser.parse_args()
    if args.compare:
        return compare(args)
    if args.defaults:
        return defaults(args)
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


def defaults(args) -> None:
    """Face crops under the defaults (`faces=auto`, the manifest's TTA) and with `faces=none`, on one server."""
    results = {}
    with serving(args.model, {"FER_BACKEND": args.backend, "FER_PRECISION": args.precision}) as (url, _):
        for images, concurrency in COMPARE_SHAPES:
            for faces in ("auto", "none"):
                before = mean_batch(url)
                row = {"server": f"faces={faces}", "endpoint": "/predict", "images": images, "load": f"c={concurrency}",
                       **load(f"{url}/predict?faces={faces}", args.duration, images=images, concurrency=concurrency)}
                after = mean_batch(url)
                row["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
                results[faces, images] = row
                print_row(row)
                print(f"{'':>14} mean batch {row['mean_batch']:.1f} images per forward pass")
    for images, concurrency in COMPARE_SHAPES:
        ratio = results["auto", images]["images_per_s"] / results["none", images]["images_per_s"]
        print(f"{images} image(s)/request at c={concurrency}: defaults / faces=none = {ratio:.2f}x")


def print_row(row: dict) -> None:
    print(f"{row['server']:>14} {row['endpoint']:<26} {row['images']:>3} img/req {row['load']:>12}: "
          f"{row['images_per_s']:>9.1f} img/s {row['requests_per_s']:>8.1f} req/s  p50 {row['p50_ms']:>7.1f} ms  "
          f"p95 {row['p95_ms']:>7.1f} ms  p99 {row['p99_ms']:>7.1f} ms  errors {row['errors']}", flush=True)


if __name__ == "__main__":
    main()
