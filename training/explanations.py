"""The explanation artifacts of a model directory: every saliency method's measured faithfulness, and the
precomputed filter visualisations the service's first calls read."""

import json
from pathlib import Path

import torch

from service.runtime.explain import Explainer
from service.runtime.filters import (
    DEFAULT_FILTERS,
    FilterRequest,
    FilterStore,
    compute_filters,
)
from service.runtime.modeldir import (
    Artifact,
    add_artifact,
    load_eager_model,
    load_manifest,
)
from training.data import has_split, load_split
from training.faithfulness import faithfulness_table


def measure_explanations(model_dir: Path, data: str, count: int, store: bool = True) -> list[dict]:
    """The faithfulness table of every saliency method on `count` validation faces; with `store`, kept in the
    directory (role `faithfulness`, so the manifest vouches for it and the service shows it)."""
    manifest = load_manifest(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    explainer = Explainer(load_eager_model(model_dir, manifest, device), manifest.architecture, device)
    split = "val" if has_split(data, "val") else "train"
    images = load_split(data, split, manifest.input.height).images[:count].unsqueeze(1).to(device)
    rows = faithfulness_table(explainer, images)
    if not store:
        return rows
    path = Path(model_dir) / Artifact.FAITHFULNESS.file
    path.write_text(json.dumps({"data": data, "split": split, "rows": rows}, indent=1))
    add_artifact(model_dir, manifest, Artifact.FAITHFULNESS)
    return rows


def precompute_filters(model_dir: Path) -> int:
    """Store the default filter visualisations of every convolution, so the service's first call is fast."""
    manifest = load_manifest(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    explainer = Explainer(load_eager_model(model_dir, manifest, device), manifest.architecture, device)
    store = FilterStore(model_dir, manifest.version, capacity=0)
    requests = [FilterRequest.make(explainer, "conv1", DEFAULT_FILTERS, "weights")]
    requests += [FilterRequest.make(explainer, layer, DEFAULT_FILTERS) for layer in explainer.layers]
    for request in requests:
        store.save(request, compute_filters(explainer, request))
    return len(requests)
