"""`python -m bench.profile [--model DIR] [--images 32 --concurrency 4] [--before CHECKOUT MODEL_DIR]`: where
the real server's time goes under load.

Starts the server (uvicorn, as `python -m service`, `FER_TTA=none`: one forward pass per image), warms it up,
then drives it with `bench.load` from another process while py-spy samples its Python stacks (`pip install
py-spy`; threads that wait are not sampled, so the shares are of busy time). Prints the functions that hold the
most samples themselves (time in C code called from Python, such as a forward pass, counts for the Python
function that called it) and the request path's own functions
inclusive of what they call. `--before`: the same for the server of another checkout (e.g. a `git worktree` of
an older revision) serving its own export of the same weights, in the same run.
"""

import argparse
import collections
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.serve import ROOT, load, serving

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")


def frames(stack: str) -> list[str]:
    """'function (site-packages/x/y.py:12)' frames as 'x/y.py:function', outermost first."""
    named = []
    for frame in stack.split(";"):
        match = FRAME.match(frame.strip())
        file = Path(match["file"]) if match else None
        named.append(f"{file.parent.name}/{file.name}:{match['function']}" if match else frame.strip())
    return named


def summarise(raw: Path, top: int, own: str) -> None:
    self_samples, inclusive = collections.Counter(), collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        names, samples = frames(stack), int(count)
        total += samples
        self_samples[names[-1]] += samples
        for name in set(names):
            inclusive[name] += samples
    print(f"  {total} samples; top {top} by own samples:")
    for name, samples in self_samples.most_common(top):
        print(f"  {100 * samples / total:5.1f} %  {name}")
    print(f"  the request path's own functions ({own}), including what they call:")
    mine = [(name, samples) for name, samples in inclusive.most_common() if re.match(own, name)]
    for name, samples in mine[:top]:
        print(f"  {100 * samples / total:5.1f} %  {name}")


def py_spy() -> str:
    """py-spy beside this Python (a virtual environment's bin/) or on the PATH."""
    found = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def profile(name: str, root: Path, model: Path, args) -> None:
    with tempfile.TemporaryDirectory() as scratch, serving(model, {"FER_TTA": "none"}, root=root) as (url, server):
        raw = Path(scratch) / "profile.txt"
        url = f"{url}/predict?faces=none"
        load(url, 2.0, images=args.images, concurrency=args.concurrency, warmup=0)  # warm-up, not sampled
        spy = subprocess.Popen([py_spy(), "record", "--pid", str(server.pid), "--format", "raw", "--output",
                                str(raw), "--duration", str(math.ceil(args.duration)), "--rate", "200",
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        result = load(url, args.duration, images=args.images, concurrency=args.concurrency, warmup=0)
        _, errors = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {errors.strip()}")
        print(f"{name}: {args.images} image(s)/request, c={args.concurrency}: {result['images_per_s']} img/s, "
              f"p99 {result['p99_ms']} ms")
        summarise(raw, args.top, args.own)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--images", type=int, default=32, help="images per request")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load (and of sampling)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--own", default=r"(service|routers|runtime)/", help="regular expression of the request "
                                                                             "path's frames (directory/file.py:function)")
    parser.add_argument("--before", nargs=2, type=Path, metavar=("CHECKOUT", "MODEL_DIR"),
                        help="another checkout of this repository and the model directory its server loads")
    args = parser.parse_args()
    if args.before:
        profile("before", *(path.resolve() for path in args.before), args)
    profile("this checkout", ROOT, args.model.resolve(), args)


if __name__ == "__main__":
    main()
