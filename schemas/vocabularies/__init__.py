"""Controlled vocabularies, kept as data files beside this module."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Analyte",
    "Mission",
    "Unit",
    "analyte_aliases",
    "analytes",
    "collection_methods",
    "materials",
    "missions",
    "techniques",
    "unit_synonyms",
    "units",
]


class Mission(BaseModel):
    """A sample-return mission: when and where it landed."""

    model_config = ConfigDict(frozen=True)

    landed: datetime
    lat_deg: float
    lon_deg: float


class Analyte(BaseModel):
    """An analyte code's class (oxide, trace, age ...) and the unit its values are kept in."""

    model_config = ConfigDict(frozen=True)

    code: str
    kind: str
    unit: str


class Unit(BaseModel):
    """A unit, its dimension, and its size against the dimension's reference (1 ppm, 1 Ma)."""

    model_config = ConfigDict(frozen=True)

    code: str
    dimension: str
    factor: Decimal


def _load(name: str) -> Any:
    return json.loads(resources.files(__package__).joinpath(name).read_text("utf-8"))


@cache
def missions() -> dict[str, Mission]:
    """Missions by their canonical name (``Apollo 17``, ``Luna 24``, ``Chang'e-5`` ...)."""
    text = resources.files(__package__).joinpath("missions.json").read_text("utf-8")
    return {name: Mission(**row) for name, row in json.loads(text)["missions"].items()}


@cache
def techniques() -> dict[str, tuple[str, ...]]:
    """Analytical techniques: canonical code -> the aliases partners write for it."""
    rows = _load("techniques.json")["techniques"]
    return {code: tuple(row["aliases"]) for code, row in rows.items()}


@cache
def analytes() -> dict[str, Analyte]:
    """Analytes by code (``La``, ``TiO2``, ``age_ArAr`` ...) with their canonical unit."""
    rows = _load("analytes.json")["analytes"]
    return {
        code: Analyte(code=code, kind=row["class"], unit=row["unit"]) for code, row in rows.items()
    }


@cache
def analyte_aliases() -> dict[str, str]:
    """Other spellings of analyte codes (``FeOT`` -> ``FeO_T``)."""
    return dict(_load("analytes.json")["aliases"])


@cache
def units() -> dict[str, Unit]:
    """Units by code; a value converts between two units of the same dimension only."""
    rows = _load("units.json")["units"]
    return {
        code: Unit(code=code, dimension=row["dimension"], factor=Decimal(str(row["factor"])))
        for code, row in rows.items()
    }


@cache
def unit_synonyms() -> dict[str, str]:
    """Other spellings of units (``µg/g`` -> ``ppm``, ``ng/g`` -> ``ppb``)."""
    return dict(_load("units.json")["synonyms"])


@cache
def materials(kind: str) -> dict[str, tuple[str, ...]]:
    """Materials of a ``specimen`` or of what an analysis measured (``analysed``): canonical
    name -> the source codes (``ROCK``, ``COM``, ``WR`` ...) that mean it."""
    rows = _load("materials.json")[kind]
    return {name: tuple(row["codes"]) for name, row in rows.items()}


@cache
def collection_methods() -> dict[str, tuple[str, ...]]:
    """Collection methods: canonical name -> curation sampling-technique codes."""
    rows = _load("collection_methods.json")["collection_methods"]
    return {name: tuple(row["codes"]) for name, row in rows.items()}
