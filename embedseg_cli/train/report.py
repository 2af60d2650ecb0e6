"""What :func:`~embedseg_cli.train.train` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedseg_cli.records import ModelOrigin

__all__ = ["TrainReport"]


@dataclass(frozen=True)
class TrainReport:
    """What ``train`` did."""

    run: str
    epochs: int
    best_epoch: int | None
    best_ap: float | None
    """Best validation AP_dsb at IoU 0.5 (None without validation images)."""
    foreground_threshold: float
    final_loss: float
    """Mean loss of the last epoch trained by this call (NaN where it trained none)."""
    seconds: float
    history: list[dict[str, Any]]
    start_epoch: int = 0
    """Epochs the run had completed before this call (0 for a new run); where it is at
    least ``epochs``, a resumed run had nothing left to train."""
    started_from: ModelOrigin | None = None
    """Where the run's initial weights came from (``from_model``); None: random weights."""
