"""The models of LLM_TABLE and their load."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import SettingsDep, StoreDep

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "albert-spp"
    replicas: int
    queued: int
    running: int
    workers: int


class ModelsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


@router.get("")
async def list_models(settings: SettingsDep, store: StoreDep) -> ModelsPublic:
    """The models of LLM_TABLE with their queue depth, running jobs and live workers."""
    stats = await store.model_stats(settings.models)
    return ModelsPublic(
        data=[
            ModelPublic(id=model, replicas=len(settings.backends_for(model)), **stats[model])
            for model in settings.models
        ]
    )
