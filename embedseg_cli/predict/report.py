"""What a ``predict`` run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedseg_cli.predict.objectsize import ObjectScale

__all__ = ["PredictReport"]


@dataclass(frozen=True)
class PredictReport:
    """What ``predict`` did."""

    images: int
    objects: int
    outputs: list[str]
    seconds: float
    network_seconds: float | None = None
    """Time in the network itself (threaded engine only; workers keep their own clocks)."""
    plans: list[dict[str, Any]] = field(default_factory=list)
    """With ``dry_run``: the plan of each volume and its estimated memory and time."""
    object_sizes: dict[str, ObjectScale] = field(default_factory=dict)
    """By input name: how it was resampled for the size of its objects."""
