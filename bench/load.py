"""Load generator, run as its own process: `python -m bench.load --url URL ...` prints one JSON line.

Closed loop (`--concurrency` callers, each sends its next request when the last one returns) or open loop
(`--rate` requests per second on a fixed schedule; latency counts from the scheduled time, so a slow
server cannot hide its queueing).
"""

import argparse
import asyncio
import json
import time

import aiohttp
import httpx
import numpy as np

from tests.images import face_bytes

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def multipart_body(images: int) -> tuple[bytes, dict]:
    """One multipart body of `images` synthetic faces, encoded once and sent by every request."""
    files = [("files", (f"{i}.png", face_bytes(EXPRESSIONS[i % 7], seed=i), "image/png")) for i in range(images)]
    request = httpx.Request("POST", "http://localhost/", files=files)
    return request.read(), {"content-type": request.headers["content-type"]}


def photo_body(faces: int) -> tuple[bytes, dict]:
    """One 640x480 JPEG photo of `faces` people (bench.photos.group_photo), as every request sends it."""
    import io

    from PIL import Image

    from bench.photos import group_photo

    encoded = io.BytesIO()
    Image.fromarray(group_photo(faces)).save(encoded, "JPEG", quality=90)
    photo = ("files", ("photo.jpg", encoded.getvalue(), "image/jpeg"))
    request = httpx.Request("POST", "http://localhost/", files=[photo])
    return request.read(), {"content-type": request.headers["content-type"]}


async def post(session: aiohttp.ClientSession, url: str, body: tuple[bytes, dict]) -> int:
    async with session.post(url, data=body[0], headers=body[1]) as response:
        await response.read()
        return response.status


async def closed_loop(session: aiohttp.ClientSession, url: str, body, concurrency: int, duration: float):
    latencies, errors = [], 0
    stop = time.perf_counter() + duration

    async def caller():
        nonlocal errors
        while time.perf_counter() < stop:
            started = time.perf_counter()
            if await post(session, url, body) == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def open_loop(session: aiohttp.ClientSession, url: str, body, rate: float, duration: float):
    latencies, errors = [], 0

    async def call(scheduled: float):
        nonlocal errors
        if await post(session, url, body) == 200:
            latencies.append(time.perf_counter() - scheduled)
        else:
            errors += 1

    started = time.perf_counter()
    tasks = []
    for i in range(int(rate * duration)):
        scheduled = started + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(call(scheduled)))
    await asyncio.gather(*tasks)
    return latencies, errors, time.perf_counter() - started


async def run(args) -> dict:
    body = photo_body(args.photo_faces) if args.photo_faces else multipart_body(args.images)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await closed_loop(session, args.url, body, min(args.concurrency, 4), args.warmup)
        if args.rate:
            latencies, errors, elapsed = await open_loop(session, args.url, body, args.rate, args.duration)
        else:
            latencies, errors, elapsed = await closed_loop(session, args.url, body, args.concurrency, args.duration)
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "images_per_s": round(len(latencies) * args.images / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--photo-faces", type=int, default=0,
                        help="send one 640x480 photo of this many people (1-4) per request instead of face crops")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
