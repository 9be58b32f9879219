"""Weights mixed weight by weight: checkpoints of one run averaged (a uniform model soup, Wortsman et al. 2022),
and a fine-tuned run interpolated with the shipped weights it started from (WiSE-FT, Wortsman et al. 2022); and
batch-norm statistics recomputed for the weights as they are served (what SWA does after averaging)."""

from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import update_bn

from schemas.manifest import TrainingConfig
from service.runtime.architectures import FerNet
from service.runtime.tta import views
from training.shipped import WeightsError, load_shipped_weights


def average_weights(checkpoints: list[Path], states: list[dict]) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' weights (integer buffers, such as batch-norm's step counts, from the first);
    only checkpoints of one run (the same training configuration) are averaged."""
    def described(state: dict) -> dict:
        # settings added since a checkpoint was written take their defaults, as on --resume
        return {"config": TrainingConfig(**state["config"]).model_dump(),
                **{key: state.get(key) for key in ("architecture", "classes", "input_size")}}

    first = described(states[0])
    for path, other in zip(checkpoints[1:], states[1:]):
        described_other = described(other)
        for key, mine in first.items():
            theirs = described_other[key]
            if theirs != mine:
                differing = sorted(name for name in mine if mine[name] != theirs[name]) if key == "config" else []
                raise WeightsError(f"{path}: not a checkpoint of the same run as {checkpoints[0]} (its {key} "
                                   f"differs{': ' + ', '.join(differing) if differing else ''}); only one run's "
                                   "checkpoints are averaged")
    return weighted_sum([other["model"] for other in states], [1 / len(states)] * len(states))


def interpolate_with_parent(weights: dict[str, torch.Tensor], config: TrainingConfig, parent_weight: float,
                            checkpoint: Path) -> dict[str, torch.Tensor]:
    """(1 - w) x `weights` + w x the weights the run was fine-tuned from, which must still be the file the run
    recorded (its sha256); integer buffers stay the run's."""
    if config.parent is None:
        raise WeightsError(f"{checkpoint}: its run was not fine-tuned from shipped weights (--weights "
                           f"{config.weights}), so it has no parent to interpolate with (--parent-weight)")
    parent_file = Path(config.weights)  # where the run read its parent (the card names only the file)
    parent, card = load_shipped_weights(parent_file)
    if card["sha256"] != config.parent.sha256:
        raise WeightsError(f"{parent_file}: sha256 {card['sha256'][:16]}... is not the {config.parent.sha256[:16]}... "
                           f"the run of {checkpoint} was fine-tuned from (the file was replaced since); put "
                           "those weights back at that path, relative to where the run was started")
    return weighted_sum([weights, parent.state_dict()], [1 - parent_weight, parent_weight])


def weighted_sum(weights: list[dict[str, torch.Tensor]], shares: list[float]) -> dict[str, torch.Tensor]:
    """share_1 x weights_1 + share_2 x weights_2 + ..., weight by weight in float64; integer buffers (such as
    batch-norm's step counts) are the first's."""
    first = weights[0]
    return {name: sum(share * other[name].double() for other, share in zip(weights, shares)).to(tensor.dtype)
            if tensor.is_floating_point() else tensor for name, tensor in first.items()}


def recompute_batch_norm(model: FerNet, faces: torch.Tensor, tta: str, batch_size: int = 256) -> None:
    """Batch-norm running statistics measured anew on clean faces (uint8 N x H x W) seen through the served TTA's
    views, as a cumulative average over batches (torch.optim.swa_utils.update_bn), each batch holding every view of
    its faces so that the spread between views is in the variance. The run's statistics are the EMA of augmented
    batches' (erased, zoomed, turned faces), not of the faces it is served: on FER2013 PublicTest this gained L6
    (the shipped model) a point with flip, and nothing with ten-crop, whose zoomed views are closer to the
    augmentation (docs/benchmarks.md)."""
    images = faces.unsqueeze(1).numpy()
    per_batch = max(1, batch_size // len(views(images[:1], tta)))
    batches = (torch.from_numpy(np.concatenate(views(images[start:start + per_batch], tta)))
               for start in range(0, len(images), per_batch))
    update_bn(batches, model)
    model.eval()
