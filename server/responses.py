"""The JSON bodies of the tile server's own routes, as pydantic models (the OpenAPI schema shows them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class LayerEntry(BaseModel):
    id: str
    title: str = Field(description="computed layers name their model and its skill, e.g. 'NO SKILL (...)'")
    kind: str = Field(description="imagery | factor | detection | susceptibility | overlay")
    units: str
    categorical: bool = Field(False, description="class values (nearest-neighbour at every zoom, a class legend)")
    description: str
    synthetic: bool
    computed: bool = Field(description="computed on request by a model through the block engine")
    available: bool = Field(True, description="false when an input or model is missing; see `problem`")
    problem: str | None = None
    formats: list[str]
    minzoom: int | None = None
    maxzoom: int | None = None
    bounds: list[float] | None = Field(None, description="west, south, east, north (WGS84)")
    tiles: str | None = Field(None, description="XYZ PNG template in WebMercatorQuad")
    tilejson: str
    wmts: str
    legend: str
    model: str | None = Field(None, description="the default model's version (computed layers)")
    model_name: str | None = None
    skill: str | None = Field(None, description="the default model's skill, e.g. 'ROC-AUC 0.912 [0.88, 0.94]'")
    has_skill: bool | None = Field(None, description="false: no model of this role has skill (no default)")
    models: list[str] = Field(default_factory=list, description="model versions selectable with ?model=")


class LayersResponse(BaseModel):
    region: str
    synthetic: bool
    layers: list[LayerEntry]


class ModelEntry(BaseModel):
    name: str
    version: str
    created: str | None = None
    synthetic: bool | None = None
    skill: str = Field(description="e.g. 'ROC-AUC 0.912 [0.88, 0.94]' or 'NO SKILL (...)'")
    has_skill: bool
    metric: str | None = None
    score: float | None = None
    ci95: list[float] | None = None
    default: bool = Field(description="the region's default for this role")


class RoleModels(BaseModel):
    default: str | None = Field(description="version of the default model (None: no model with skill)")
    models: list[ModelEntry]


class ModelsResponse(BaseModel):
    region: str
    synthetic: bool
    roles: dict[str, RoleModels] = Field(description="susceptibility and detection")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    problems: list[str] = Field(description="why the server is degraded (empty when ok)")
    region: str
    synthetic: bool
    layers: int
    available_layers: int
    models: dict[str, dict[str, Any]]
    device: dict[str, Any]
    cache: dict[str, Any]
    inference: dict[str, Any]


class PointResponse(BaseModel):
    """Values at one location. Keys are flat so dashboards read them directly."""

    lon: float
    lat: float
    inside: bool = Field(description="the point lies inside the region's analysis grid")
    synthetic: bool
    factors: dict[str, float | None] = Field(description="factor values in physical units (null = nodata)")
    factor_classes: dict[str, str] = Field(default_factory=dict,
                                           description="class names of the categorical factors' values there")
    units: dict[str, str]
    detection_probability: float | None = Field(None, description="U-Net landslide probability, 0..1")
    detection_model: str | None = None
    susceptibility_probability: float | None = Field(None, description="susceptibility probability, 0..1")
    susceptibility_class: int | None = Field(None, description="1 very low .. 5 very high")
    susceptibility_class_name: str | None = None
    susceptibility_model: str | None = None
    notes: dict[str, str] = Field(default_factory=dict, description="why an output is missing")
