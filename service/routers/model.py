from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from schemas.api import ErrorResponse, ExplanationMethods, ModelReport
from service.deps import get_model
from service.model import FerModel

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelReport, responses={503: {"model": ErrorResponse}})
async def model_report(model: FerModel = Depends(get_model)) -> ModelReport:
    """Manifest, architecture table, training history, confusion matrix and the explanations' faithfulness."""
    return model.report()


@router.get("/model/report", response_class=FileResponse,
            responses={200: {"content": {"text/html": {}}, "description": "One self-contained HTML page"},
                       404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def model_report_page(model: FerModel = Depends(get_model)) -> FileResponse:
    """The model card, the course report's five questions and its derivations checked, as the HTML page that
    `python -m training report --model DIR` stored in the model directory (what the web page's model view shows)."""
    page = model.report_page()
    if page is None:
        raise HTTPException(404, "this model directory holds no report: run `python -m training report --model "
                                 "MODEL_DIR` and restart the service")
    return FileResponse(page, media_type="text/html")


@router.get("/explanations", response_model=ExplanationMethods)
async def explanation_methods(model: FerModel = Depends(get_model)) -> ExplanationMethods:
    """The saliency methods, each with its measured faithfulness and whether it passes the sanity check."""
    return ExplanationMethods(methods=model.explanation_methods())
