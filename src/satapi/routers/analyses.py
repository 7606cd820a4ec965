"""GET /api/analyses/{id}: a persisted analysis answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from satapi.deps import AnalysisDep
from satapi.errors import NotFound
from satapi.models import StoredAnalysis
from satapi.storage import ID_PATTERN

router = APIRouter(prefix="/api/analyses", tags=["analyses"])


@router.get("/{analysis_id}", summary="Get a stored analysis", response_model=StoredAnalysis)
async def get_analysis(
    analysis_id: Annotated[str, Path(pattern=ID_PATTERN, description="64 lower-case hex.")],
    analysis: AnalysisDep,
) -> Any:
    """The answer of an earlier analysis (vision or comparison), as it was returned."""
    stored = await analysis.get(analysis_id)
    if stored is None:
        raise NotFound(f"No stored analysis has the id {analysis_id}.")
    stored.pop("derived_images", None)
    return stored
