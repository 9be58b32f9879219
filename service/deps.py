"""FastAPI dependencies: what a route needs, taken from the app's state."""

from typing import Annotated

from fastapi import Depends, Query, Request

from schemas.api import FACES_DESCRIPTION, FacesMode
from service.dataplane import DataPlane, Images, ImageSource
from service.model import FerModel
from service.settings import Settings
from service.uploads import read_uploads


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_plane(request: Request) -> DataPlane:
    return request.app.state.plane


def get_model(plane: DataPlane = Depends(get_plane)) -> FerModel:
    """The served model (NotReady, answered 503, while it is not loaded)."""
    return plane.served()


FacesQuery = Annotated[FacesMode, Query(description=FACES_DESCRIPTION)]


def upload_reader(request: Request, faces: FacesQuery = "auto", plane: DataPlane = Depends(get_plane)):
    """Reads the request's uploads (multipart `files` or JSON base64 `images`) when the plane asks for them."""
    async def read() -> Images:
        return Images(await read_uploads(request, plane.settings.max_images_per_request), faces=faces)

    return read


Plane = Annotated[DataPlane, Depends(get_plane)]
ServedModel = Annotated[FerModel, Depends(get_model)]
UploadReader = Annotated[ImageSource, Depends(upload_reader)]
