"""One error shape for every client error, `{"detail": "<message>"}`, also for FastAPI's validation errors,
and the OpenAPI document that says so."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.api import ErrorResponse, ImagesRequest, ProtocolErrorResponse
from service.admission import Busy, Draining
from service.batching import QueueFullError, ShuttingDownError
from service.dataplane import NotReady
from service.runtime.images import ImageError, excerpt
from service.oip import ProtocolError
from service.parameters import InvalidParameter
from service.runtime.explain import Cancelled
from service.security import is_open

INPUT_EXCERPT = 40  # characters of a rejected value quoted back
MAX_LISTED_ERRORS = 5
LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie",
             "body": "body"}
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def validation_message(errors: list[dict[str, Any]]) -> str:
    """'query parameter `top_k`: Input should be less than or equal to 7 (got '9')'; several joined by '; '."""
    parts = []
    for error in errors[:MAX_LISTED_ERRORS]:
        where, *names = error.get("loc") or ("body",)
        field = ".".join(str(name) for name in names)
        place = f"{LOCATIONS.get(where, where)} `{excerpt(field, INPUT_EXCERPT)}`" if field else LOCATIONS.get(where, where)
        value = error.get("input")
        got = f" (got {excerpt(str(value), INPUT_EXCERPT)!r})" if isinstance(value, (str, int, float)) else ""
        parts.append(f"{place}: {error.get('msg', 'invalid')}{got}")
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more errors")
    return "; ".join(parts)


V2_PREFIX = "/v2"


def error_key(path: str) -> str:
    """The Open Inference Protocol's routes answer `{"error": ...}`; the service's own `{"detail": ...}`."""
    return "error" if path == V2_PREFIX or path.startswith(V2_PREFIX + "/") else "detail"


def error_response(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({error_key(request.url.path): message}, status_code=status, headers=headers)


def known_error(error: BaseException, protocol: bool = False) -> tuple[int, str, dict | None] | None:
    """The status, message and headers the service answers `error` with (on the protocol's routes, `protocol`,
    an invalid parameter is a 400); None for an error it does not know (a fault of the service)."""
    if isinstance(error, StarletteHTTPException):
        return error.status_code, str(error.detail), getattr(error, "headers", None)
    if isinstance(error, InvalidParameter):
        return 400 if protocol else error.status, str(error), None
    if isinstance(error, (ImageError, ProtocolError)):
        return error.status, str(error), None
    if isinstance(error, NotReady):
        return 503, str(error), {"Retry-After": "1"}
    if isinstance(error, UNAVAILABLE):  # explanation slots full, work cancelled, the queue full, or draining
        return 503, f"try again shortly: {error}", {"Retry-After": "1"}
    return None


async def known_error_response(request: Request, error: Exception) -> JSONResponse:
    status, message, headers = known_error(error, protocol=error_key(request.url.path) == "error")
    return error_response(request, status, message, headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with one readable message; the protocol's routes call a malformed request a 400."""
    status = 400 if error_key(request.url.path) == "error" else 422
    return error_response(request, status, validation_message(list(error.errors())))


UNAVAILABLE = (Busy, Draining, Cancelled, QueueFullError, ShuttingDownError)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the service maps to a status, in one place (`known_error`), answered as JSON; a streamed answer
    whose status is sent says the same in its last line."""
    app.add_exception_handler(RequestValidationError, validation_error)
    for error in (StarletteHTTPException, ProtocolError, InvalidParameter, ImageError, NotReady, *UNAVAILABLE):
        app.add_exception_handler(error, known_error_response)


def install_openapi(app: FastAPI, keys_required: bool, metrics_open: bool) -> None:
    """The generated document, plus: ImagesRequest (referenced by the image routes' request bodies), every 422
    documented with the service's own error shape, and the API keys when they are required."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (ImagesRequest, ErrorResponse, ProtocolErrorResponse):
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name in FASTAPI_VALIDATION_SCHEMAS:
            schemas.pop(name, None)
        for path, operations in document["paths"].items():
            for operation in operations.values():
                _document_errors(operation, protected=keys_required and not is_open(path, metrics_open),
                                 protocol=error_key(path) == "error")
        if keys_required:
            document["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        app.openapi_schema = document
        return document

    app.openapi = openapi


def _document_errors(operation: dict, protected: bool, protocol: bool) -> None:
    """The service's routes answer invalid parameters 422 `{"detail"}`; the protocol's (v2) answer them 400
    `{"error"}`, as their own responses document."""
    responses = operation.setdefault("responses", {})
    schema = {"$ref": "#/components/schemas/ProtocolErrorResponse"} if protocol else ERROR_SCHEMA
    if protocol:
        responses.pop("422", None)
    elif "422" in responses or operation.get("parameters"):
        responses["422"] = {"description": "Invalid parameter: the message names it",
                            "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    if protected:
        responses["401"] = {"description": "Missing or invalid API key",
                            "content": {"application/json": {"schema": schema}}}
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
