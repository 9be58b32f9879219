"""The checks of an explanation request's parameters that the data plane applies whichever protocol carried
them: the target class, Grad-CAM's layer, the filter views' limits and the saliency cost budget. A bad value
raises InvalidParameter, which service/errors.py answers 422 (404 for an unknown layer) on the service's routes
and 400 under /v2."""

import re

from service.runtime.images import excerpt
from service.model import FerModel
from service.runtime.explain import METHODS
from service.runtime.filters import FilterRequest
from service.settings import Settings


class InvalidParameter(ValueError):
    """A parameter the service cannot take; the message names it."""

    status = 422  # on the service's routes; the protocol's routes answer every bad request 400


class UnknownLayer(InvalidParameter):
    """A layer the network does not have: on /filters/{layer}, a path that names nothing."""

    status = 404


def parse_target(target: str | int | None, classes: list[str]) -> int | None:
    """A class name or index (ASCII digits only: str.isdigit takes '²'); None for the predicted class."""
    if target is None:
        return None
    if isinstance(target, str):
        name = target.strip().lower()
        if name in classes:
            return classes.index(name)
        if re.fullmatch(r"[0-9]{1,3}", name):
            target = int(name)
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(classes):
        return target
    raise InvalidParameter(f"parameter `target`: unknown target {excerpt(str(target), 40)!r}: expected a class "
                           f"name ({', '.join(classes)}) or an index 0-{len(classes) - 1}")


def check_saliency_cost(model: FerModel, method: str, faces: int, budget: int, *,
                        counted: str | None = None, advice: str = "send fewer images or use a cheaper method") -> None:
    """Refuses an explanation of `faces` faces (`counted` says what they are, "N faces" by default) whose forward
    passes would exceed the per-request budget, naming the cost and what to change (`advice`)."""
    cost = METHODS[method].forward_passes(faces, model.explainer.model.image_size)
    if cost > budget:
        raise InvalidParameter(f"{method} on {counted or f'{faces} faces'} costs {cost} forward passes, more than the "
                               f"budget of {budget} per request: {advice}")


VIDEO_SALIENCY_ADVICE = "lower `fps`, send a shorter span (`start`, `end`) or use a cheaper method"


def check_layer(model: FerModel, layer: str) -> None:
    if layer not in model.explainer.layers:
        raise UnknownLayer(f"unknown layer {excerpt(layer, 40)!r}; valid layers: {', '.join(model.explainer.layers)}")


def check_saliency_layer(model: FerModel, layer: str) -> None:
    """Grad-CAM's `layer`: a module of the network whose output is a map (a query parameter, so 422 rather than
    check_layer's 404)."""
    explainer = model.explainer
    try:
        explainer.module(layer)
    except KeyError:
        raise InvalidParameter(f"query parameter `layer`: unknown layer {excerpt(layer, 40)!r}: expected a module "
                               f"of the network such as {explainer.default_layer} or "
                               f"{next(reversed(explainer.layers))}") from None
    if (layer or explainer.default_layer) not in explainer.spatial_layers:  # an empty name is the default
        raise InvalidParameter(f"query parameter `layer`: {excerpt(layer, 40)!r} gives no spatial map for Grad-CAM "
                               f"to weigh: expected a convolution, block or stage such as {explainer.default_layer}")


def checked_filter_request(model: FerModel, settings: Settings, layer: str, filters: tuple[int, ...], mode: str,
                           steps: int, size: int) -> FilterRequest:
    """A filter-visualisation request checked against the network and the service's limits."""
    check_layer(model, layer)
    count = model.explainer.layers[layer].weight.shape[0]
    if not 1 <= len(filters) <= settings.max_filters_per_request:
        raise InvalidParameter(f"parameter `filters`: ask for 1 to {settings.max_filters_per_request} filters, got "
                               f"{len(filters)}")
    outside = [index for index in filters if not 0 <= index < count]
    if outside:
        raise InvalidParameter(f"parameter `filters`: filter index {outside[0]} out of range: {layer} has filters "
                               f"0-{count - 1}")
    if mode == "weights" and layer != "conv1":
        raise InvalidParameter("parameter `mode`: mode=weights shows raw kernels of conv1 only (deeper kernels span "
                               "many channels)")
    if steps > settings.max_filter_steps:
        raise InvalidParameter(f"parameter `steps`: {steps} exceeds the limit of {settings.max_filter_steps}")
    return FilterRequest.make(model.explainer, layer, filters, mode, steps, size)


def check_integer(parameters: dict, key: str, default: int, low: int, high: int | None = None) -> int:
    """An integer parameter sent as JSON (a number, or ASCII digits: not str.isdigit, which takes '²')."""
    value = parameters.get(key, default)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidParameter(f"parameter {key!r} must be an integer {bounds}, got {value!r}")
    return value


FILTERS_PART = re.compile(r"([0-9]{1,6})(?:-([0-9]{1,6}))?")  # ASCII digits, short: no layer has a million filters


def parse_filters(text: str, limit: int) -> tuple[int, ...]:
    """`/filters`' query '0-15' or '0,3,8-11' as indices; checked against the layer by checked_filter_request."""
    indices: list[int] = []
    quoted = excerpt(text, 40)
    for part in text.replace(" ", "").split(","):
        match = FILTERS_PART.fullmatch(part)
        if not match:
            raise InvalidParameter(f"query parameter `filters`: {quoted!r} is not indices and ranges such as "
                                   "0-15 or 0,3,8-11")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise InvalidParameter(f"query parameter `filters`: range {part} runs backwards")
        if len(indices) + last - first + 1 > limit:  # before expanding a range such as 0-999999
            raise InvalidParameter(f"query parameter `filters`: {quoted!r} asks for more than {limit} filters "
                                   "in one request")
        indices.extend(range(first, last + 1))
    return tuple(indices)
