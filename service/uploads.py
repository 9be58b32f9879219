"""Reading uploads out of a request: images as multipart `files` (repeatable) or JSON `{"images": [base64, ...]}`;
a video as a multipart `file` or the raw body, spooled to a temporary file."""

import tempfile
from contextlib import AsyncExitStack
from typing import BinaryIO

import anyio
from fastapi import HTTPException, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.api import ImagesRequest
from service.errors import validation_message
from service.errors import error_key
from service.dataplane import check_image_count, decode_base64
from service.runtime.images import excerpt

# Starlette's multipart parser answers 400 with these messages when a form has more parts than allowed.
TOO_MANY_PARTS = ("Too many files", "Too many fields")


async def read_uploads(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """(filename, bytes) per image, in request order; 4xx for anything a client got wrong."""
    try:
        return await _read_uploads(request, max_images)
    except ClientDisconnect:  # gone, or cut off by the server's body timeout: nobody reads this answer
        raise HTTPException(400, "the client disconnected before the request body was complete") from None


async def _read_uploads(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await _form(request, max_images)
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
            errors = [{**item, "loc": ("body", *item["loc"])} for item in error.errors()]
            raise HTTPException(422, f"invalid JSON body: {validation_message(errors)}") from None
        names = body.filenames or [f"image{i}" for i in range(len(body.images))]
        if len(names) != len(body.images):
            raise HTTPException(422, f"{len(names)} filenames for {len(body.images)} images")
        check_image_count(len(body.images), max_images)  # before decoding any of them
        files = [(name, decode_base64(name, text)) for name, text in zip(names, body.images)]
    else:
        raise HTTPException(415, f"unsupported content type {excerpt(content_type) or '(none)'!r}: send multipart/form-data "
                                 "with `files` fields, or application/json with {\"images\": [base64, ...]}")
    return files


async def _form(request: Request, max_images: int):
    try:
        return await request.form(max_files=max_images, max_fields=max_images + 16)
    except StarletteHTTPException as error:  # what Starlette's form parser raises
        if error.status_code == 400 and str(error.detail).startswith(TOO_MANY_PARTS):
            raise HTTPException(413, f"too many parts in the form: at most {max_images} images per request "
                                     f"({error.detail})") from None
        raise


VIDEO_TYPES = ("video/", "application/octet-stream")
SPOOL_BYTES = 1024 * 1024  # of a raw video body held in memory before it goes to disk (multipart's spools alike)


async def read_video(request: Request, closing: AsyncExitStack) -> tuple[str, BinaryIO]:
    """The request's video (a multipart `file` field, or a raw body of a video/* or octet-stream type) as a
    seekable file, closed (and deleted) by `closing`. Its size is bounded by the body limit of /video."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            form = await _form(request, 1)
            closing.push_async_callback(form.close)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "no video: send it as a multipart file field named `file`" if upload is None
                                    else "`file` is text, not a file upload")
            return upload.filename or "video", upload.file
        if content_type.startswith(VIDEO_TYPES):
            spool = closing.enter_context(tempfile.SpooledTemporaryFile(SPOOL_BYTES))
            upload = UploadFile(spool)  # the write that rolls it to disk, and each after, on a worker thread
            async for chunk in request.stream():
                await upload.write(chunk)
            if not spool.tell():
                raise HTTPException(400, "empty body: send the video file as the body")
            spool.seek(0)
            return request.headers.get("x-filename", "video"), spool
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before the request body was complete") from None
    except OSError as error:  # the temporary directory is full: not the client's fault
        raise HTTPException(503, f"no room to store the upload now ({error.strerror or error}): try again shortly",
                            headers={"Retry-After": "5"}) from None
    raise HTTPException(415, f"unsupported content type {excerpt(content_type) or '(none)'!r}: send the video as "
                             "multipart/form-data with a `file` field, or as the body with a video/* type")


class BodySizeLimitMiddleware:
    """413 for bodies over their path's limit (`max_bytes`, or `path_limits`'), declared (Content-Length) or
    streamed, before they are buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        # (a length of more digits than any limit is refused without converting it: int() caps digits)
        if declared is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes):
            message = f"request body of {excerpt(declared.decode(), 20)} bytes exceeds the limit of {max_bytes}"
            response = JSONResponse({error_key(scope["path"]): message}, status_code=413,
                                    headers={"connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise HTTPException(413, f"request body exceeds the limit of {max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class RefusedBodyDrainMiddleware:
    """An error answered before its request's body has all arrived (a video refused at admission, before its upload
    is read) is sent once the rest of the body is read and dropped, up to `max_bytes` and `max_s`: a server that
    answers and closes while the body is still coming makes the client's kernel reset the connection, and the
    client then often sees the reset instead of the answer. Not waited for: bodies declared larger than that, a
    413 (refused for its size), and a client that waits for `100 Continue` before sending its body and has not been
    asked for it (reading would ask)."""

    def __init__(self, app: ASGIApp, max_bytes: int = 8 * 1024 * 1024, max_s: float = 5.0):
        self.app, self.max_bytes, self.max_s = app, max_bytes, max_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        waits_to_be_asked = headers.get(b"expect", b"").lower() == b"100-continue"
        state = {"received": 0, "asked": False, "complete": False}

        async def tracked_receive():
            state["asked"] = True
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                state["complete"] = True
            state["received"] += len(message.get("body", b""))
            return message

        async def draining_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400 and message["status"] != 413 \
                    and not state["complete"] and not (waits_to_be_asked and not state["asked"]):
                await self._drain(declared, state, tracked_receive)
            await send(message)

        await self.app(scope, tracked_receive, draining_send)

    async def _drain(self, declared: bytes, state: dict, receive: Receive) -> None:
        if declared.isdigit() and (len(declared) > 18 or int(declared) - state["received"] > self.max_bytes):
            return
        started = state["received"]
        with anyio.move_on_after(self.max_s):
            while not state["complete"] and state["received"] - started <= self.max_bytes:
                await receive()
