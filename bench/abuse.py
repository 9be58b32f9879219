"""`make bench-abuse`: the service under an explanation flood, on loopback, bounded in time.

Starts the real server, then at once: `--flooders` clients sending SmoothGrad requests of `--images` images
and uncached filter requests as fast as they are answered, a /predict probe (one image, one request at a time),
and an RSS sampler of the server process. After `--duration` seconds it sends SIGTERM while the flood goes on
and times the exit. Prints /predict's latency during the flood, peak RSS, status counts and the shutdown.
"""

import argparse
import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from bench.load import multipart_body
from bench.serve import ROOT, free_port, start_server


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def flood(client: httpx.AsyncClient, url: str, body, statuses: Counter, stop: asyncio.Event, index: int):
    step = 0
    while not stop.is_set():
        step += 1
        try:
            if step % 3:
                response = await client.post(f"{url}/saliency?method=smoothgrad&format=json", content=body[0],
                                             headers=body[1])
            else:  # a filter view no one asked for before: computed, not cached
                response = await client.get(f"{url}/filters/layer4.1.conv2?filters={index}-{index + 7}"
                                            f"&steps={32 + step}&size=48&format=json")
            statuses[response.status_code] += 1
        except httpx.HTTPError as error:
            statuses[type(error).__name__] += 1


async def probe(client: httpx.AsyncClient, url: str, body, latencies: list, statuses: Counter, stop: asyncio.Event):
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = await client.post(f"{url}/predict?faces=none", content=body[0], headers=body[1])
            statuses[response.status_code] += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
        except httpx.HTTPError as error:
            statuses[type(error).__name__] += 1
        await asyncio.sleep(0.05)


async def sample_rss(pid: int, peak: list, stop: asyncio.Event):
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], rss_mib(pid))
        except FileNotFoundError:
            return
        await asyncio.sleep(0.2)


async def run(args, url: str, pid: int, server) -> dict:
    flood_body, probe_body = multipart_body(args.images), multipart_body(1)
    flood_statuses, probe_statuses, latencies, peak = Counter(), Counter(), [], [0.0]
    stop_flood, stop_probe = asyncio.Event(), asyncio.Event()
    limits = httpx.Limits(max_connections=args.flooders + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        tasks = [asyncio.create_task(flood(client, url, flood_body, flood_statuses, stop_flood, 8 * (i % 60)))
                 for i in range(args.flooders)]
        prober = asyncio.create_task(probe(client, url, probe_body, latencies, probe_statuses, stop_probe))
        sampler = asyncio.create_task(sample_rss(pid, peak, stop_probe))
        await asyncio.sleep(args.duration)
        stop_probe.set()
        await prober
        during = list(latencies)
        signalled = time.perf_counter()
        os.kill(pid, signal.SIGTERM)
        while server.poll() is None and time.perf_counter() - signalled < 120:
            await asyncio.sleep(0.05)
        exit_seconds = time.perf_counter() - signalled
        stop_flood.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sampler
    ms = np.array(during) * 1000 if during else np.array([float("nan")])
    return {"duration_s": args.duration, "flooders": args.flooders, "images_per_explanation": args.images,
            "predict_requests": len(during), "predict_p50_ms": round(float(np.percentile(ms, 50)), 1),
            "predict_p99_ms": round(float(np.percentile(ms, 99)), 1), "predict_max_ms": round(float(ms.max()), 1),
            "peak_rss_mib": round(peak[0], 1), "flood_statuses": dict(flood_statuses),
            "probe_statuses": dict(probe_statuses),
            "server_5xx": sum(count for status, count in {**flood_statuses, **probe_statuses}.items()
                              if isinstance(status, int) and status >= 500 and status != 503),
            "sigterm_to_exit_s": round(exit_seconds, 2), "exit_code": server.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--flooders", type=int, default=60)
    parser.add_argument("--images", type=int, default=32, help="images per SmoothGrad request")
    args = parser.parse_args()
    port = free_port()
    server = start_server(args.model, port, {"FER_MAX_IMAGES_PER_REQUEST": str(max(args.images, 1)),
                                             "FER_MAX_EXPLANATION_PASSES": str(args.images * 16)})
    try:
        result = asyncio.run(run(args, f"http://127.0.0.1:{port}", server.pid, server))
    finally:
        if server.poll() is None:
            server.kill()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
