from fastapi import APIRouter, Depends

from schemas.api import ErrorResponse, ModelReport
from service.deps import get_model
from service.model import FerModel

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelReport, responses={503: {"model": ErrorResponse}})
async def model_report(model: FerModel = Depends(get_model)) -> ModelReport:
    """Manifest, architecture table, training history and confusion matrix of the served model."""
    architecture, history, confusion = model.report()
    return ModelReport(model=model.info(), manifest=model.manifest, architecture=architecture, history=history,
                       confusion_matrix=confusion)
