from fastapi import APIRouter, Depends

from schemas.api import ErrorResponse, ExplanationMethods, ModelReport
from service.deps import get_model
from service.model import FerModel

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelReport, responses={503: {"model": ErrorResponse}})
async def model_report(model: FerModel = Depends(get_model)) -> ModelReport:
    """Manifest, architecture table, training history, confusion matrix and the explanations' faithfulness."""
    return model.report()


@router.get("/explanations", response_model=ExplanationMethods)
async def explanation_methods(model: FerModel = Depends(get_model)) -> ExplanationMethods:
    """The saliency methods, each with its measured faithfulness and whether it passes the sanity check."""
    return ExplanationMethods(methods=model.explanation_methods())
