"""Reading images out of a request: multipart `files` (repeatable) or JSON `{"images": [base64, ...]}`."""

import base64
import binascii

from fastapi import HTTPException, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.api import ImagesRequest


async def read_uploads(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """(filename, bytes) per image, in request order; 4xx for anything a client got wrong."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=max_images, max_fields=max_images + 16)
        uploads = form.getlist("files")
        if not uploads:
            raise HTTPException(400, "no images: send one or more multipart fields named `files`")
        not_files = [i for i, item in enumerate(uploads) if not isinstance(item, UploadFile)]
        if not_files:
            raise HTTPException(400, f"`files` field #{not_files[0]} is text, not a file upload")
        files = [(upload.filename or f"image{i}", await upload.read()) for i, upload in enumerate(uploads)]
    elif content_type == "application/json":
        try:
            body = ImagesRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise HTTPException(422, f"invalid JSON body: {error.errors(include_url=False)}") from None
        names = body.filenames or [f"image{i}" for i in range(len(body.images))]
        if len(names) != len(body.images):
            raise HTTPException(422, f"{len(names)} filenames for {len(body.images)} images")
        files = [(name, _b64decode(name, text)) for name, text in zip(names, body.images)]
    else:
        raise HTTPException(415, f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data "
                                 "with `files` fields, or application/json with {\"images\": [base64, ...]}")
    if len(files) > max_images:
        raise HTTPException(413, f"too many images: {len(files)} in one request, the limit is {max_images}")
    return files


def _b64decode(name: str, text: str) -> bytes:
    if "," in text[:100] and text.startswith("data:"):  # a data URL
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{name}: not valid base64") from None


class BodySizeLimitMiddleware:
    """413 for bodies over `max_bytes`, declared (Content-Length) or streamed, before they are buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            message = f"request body of {int(declared)} bytes exceeds the limit of {self.max_bytes}"
            key = "error" if scope["path"].startswith("/v2/") else "detail"  # the Open Inference Protocol's key
            response = JSONResponse({key: message}, status_code=413, headers={"connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

