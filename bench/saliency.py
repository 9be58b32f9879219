"""`python -m bench.saliency [--model DIR] [--before CHECKOUT MODEL_DIR]`: /saliency throughput per method.

Each method the service lists, 8 face crops per request (`faces=none`, PNG), 4 concurrent clients, load from
`bench.load` in its own process; the cost budget is lifted so that every method runs. `--before`: the same
loads, in the same run, against the server of another checkout of this repository (e.g. a `git worktree` of an
older revision) serving its own export of the same weights; prints after/before for each method both answer.
"""

import argparse
from pathlib import Path

import httpx

from bench.serve import ROOT, load, print_row, serving

IMAGES, CONCURRENCY = 8, 4


def measure(name: str, root: Path, model: Path, duration: float, methods: list[str] | None) -> dict[str, dict]:
    env = {"FER_MAX_IMAGES_PER_REQUEST": str(IMAGES), "FER_MAX_EXPLANATION_PASSES": str(10 ** 9)}
    with serving(model, env, root=root) as (url, _):
        if methods is None:
            methods = [method["name"] for method in httpx.get(f"{url}/explanations").json()["methods"]]
        rows = {}
        for method in methods:
            rows[method] = {"server": name, "endpoint": f"/saliency?method={method}", "images": IMAGES,
                            "load": f"c={CONCURRENCY}",
                            **load(f"{url}/saliency?method={method}&format=png&faces=none", duration,
                                   images=IMAGES, concurrency=CONCURRENCY)}
            print_row(rows[method])
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.saliency", description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--before", nargs=2, type=Path, metavar=("CHECKOUT", "MODEL_DIR"),
                        help="another checkout of this repository and the model directory its server loads")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    args = parser.parse_args()
    after = measure("this checkout", ROOT, args.model.resolve(), args.duration, None)
    if args.before is None:
        return
    checkout, model = (path.resolve() for path in args.before)
    # the older server may not list its methods: try this one's, keep those it answers
    before = measure("before", checkout, model, args.duration, list(after))
    for method, row in before.items():
        answered = [r["errors"] == 0 and r["images_per_s"] > 0 for r in (row, after[method])]
        if all(answered):
            print(f"{method}: this checkout / before = {after[method]['images_per_s'] / row['images_per_s']:.2f}x")
        else:
            print(f"{method}: no ratio ({'before' if not answered[0] else 'this checkout'} answered with errors)")


if __name__ == "__main__":
    main()
