"""Controlled vocabularies, kept as data files beside this module."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

__all__ = ["Mission", "missions"]


class Mission(BaseModel):
    """A sample-return mission: when and where it landed."""

    model_config = ConfigDict(frozen=True)

    landed: datetime
    lat_deg: float
    lon_deg: float


@cache
def missions() -> dict[str, Mission]:
    """Missions by their canonical name (``Apollo 17``, ``Luna 24``, ``Chang'e-5`` ...)."""
    text = resources.files(__package__).joinpath("missions.json").read_text("utf-8")
    return {name: Mission(**row) for name, row in json.loads(text)["missions"].items()}
