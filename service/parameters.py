"""What the REST routes and the Open Inference Protocol's share about an explanation request: the target class,
the cost budgets, and how an uncached filter view is computed within them. A bad value raises
InvalidParameter, which service/errors.py answers 422 on the service's routes and 400 under /v2."""

import re

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.admission import ExplanationPool
from service.imaging import excerpt
from service.model import FerModel
from service.runtime.explain import METHODS
from service.runtime.filters import FilterRequest, FilterResult


class InvalidParameter(ValueError):
    """A parameter the service cannot take; the message names it."""


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


def check_saliency_cost(method: str, faces: int, budget: int) -> None:
    cost = METHODS[method].forward_passes(faces)
    if cost > budget:
        raise InvalidParameter(f"{method} on {faces} faces costs {cost} forward passes, more than the budget of "
                               f"{budget} per request: send fewer images or use a cheaper method")


async def filter_views(request: Request, model: FerModel, pool: ExplanationPool, filter_request: FilterRequest,
                       budget: int) -> tuple[FilterResult, bool]:
    """The visualisation and whether it was cached; computed, within the budget and an explanation slot, when
    it was not."""
    result = await run_in_threadpool(model.cached_filters, filter_request)
    if result is not None:
        return result, True
    if filter_request.cost() > budget:
        raise InvalidParameter(f"{len(filter_request.filters)} filters x {filter_request.steps} steps x "
                               f"{filter_request.size}^2 pixels = {filter_request.cost()} exceeds the budget of "
                               f"{budget} per request: ask for fewer filters, steps or a smaller size")
    with pool.admitted() as ticket:
        return await pool.run(ticket, request, model.filters, filter_request), False
