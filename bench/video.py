"""`python -m bench.video [--model DIR] [--seconds 10] [--fps 5] [--repeat 3]`: POST /video against the same frames
posted one by one to /predict, on the real server under its defaults.

For 640x480 clips (H.264, 25 frames/s) of 1 and 4 people (bench.videos.group): sampled frames per second end to end
(upload, decoding, detection, classification, tracking, the JSON answer) for one /video request, and for the same
sampled frames, decoded here and sent as JPEG (quality 90) to /predict one request at a time and at 8 concurrent
requests. The ratio to one-at-a-time is the one #23 asks to be at least 2x.
"""

import argparse
import asyncio
import io
import time
from pathlib import Path

import aiohttp
import av
import httpx

from bench import videos
from bench.serve import ROOT, serving

SOURCE_FPS = 25


def sampled_frames(clip: bytes, times: list[float]) -> list[bytes]:
    """The clip's frames at the sampled times, as JPEG files."""
    wanted, files = {round(t, 4) for t in times}, []
    with av.open(io.BytesIO(clip)) as container:
        for frame in container.decode(video=0):
            if round(frame.time, 4) in wanted:
                buffer = io.BytesIO()
                frame.to_image().save(buffer, format="JPEG", quality=90)
                files.append(buffer.getvalue())
    return files


async def post_frames(url: str, files: list[bytes], concurrency: int) -> float:
    """Seconds to answer every frame as its own /predict request, `concurrency` at a time."""
    queue = list(reversed(files))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            form = aiohttp.FormData()
            form.add_field("files", queue.pop(), filename="frame.jpg", content_type="image/jpeg")
            async with session.post(f"{url}/predict", data=form) as response:
                assert response.status == 200, await response.text()
                await response.read()

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is kept")
    args = parser.parse_args(argv)
    with serving(args.model, {}) as (url, _):
        served = httpx.get(f"{url}/model", timeout=10).json()["model"]
        print(f"serving {served['backend']} {served['precision']} tta {served['tta']}; clips 640x480 H.264 at "
              f"{SOURCE_FPS} frames/s, {args.seconds:g} s, sampled at {args.fps:g}/s")
        for faces in (1, 4):
            clip = videos.encode(videos.group(faces, args.seconds), args.seconds, fps=SOURCE_FPS)
            best, body = float("inf"), None
            for _ in range(args.repeat):
                started = time.perf_counter()
                response = httpx.post(f"{url}/video", params={"fps": args.fps}, timeout=600,
                                      files={"file": ("clip.mp4", clip, "video/mp4")})
                best = min(best, time.perf_counter() - started)
                body = response.json()
            frames = body["frames"]
            found = sum(len(frame["faces"]) for frame in frames) / len(frames)
            files = sampled_frames(clip, [frame["time_s"] for frame in frames])
            one_by_one = min(asyncio.run(post_frames(url, files, 1)) for _ in range(args.repeat))
            concurrent = min(asyncio.run(post_frames(url, files, 8)) for _ in range(args.repeat))
            rate = len(frames) / best
            print(f"{faces} face(s), {len(frames)} sampled frames, {found:.2f} faces found per frame, "
                  f"{len(body['tracks'])} tracks: /video {rate:.1f} frames/s ({rate * found:.1f} faces/s); "
                  f"/predict one by one {len(files) / one_by_one:.1f} frames/s (ratio {one_by_one / best:.2f}x), "
                  f"8 at a time {len(files) / concurrent:.1f} frames/s (ratio {concurrent / best:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
