"""Named settings of ``prepare`` and ``train`` that reproduce a published protocol.

``embedseg prepare SRC --out P.zarr --preset NAME`` and ``embedseg train P.zarr --preset
NAME`` use them; options given on the command line win over a preset's values. The values
are the paper's (Lalit et al., MIDL 2021, appendix "Training Details"): object-centred
crops of the paper's size, 15% of the training images held out for validation, Adam at
5e-4 with a polynomial decay over 200 epochs, batches of 2 crops with gradients
accumulated over 8 batches, the best checkpoint by validation AP, and the foreground
threshold tuned on the validation images. ``usiigaci-cpu`` is this project's, for training
without a GPU: the paper's field of view on a grid twice as coarse (``--downsample 2``,
256x256 crops), with more, smaller optimiser steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """Option values of ``prepare`` and ``train``, by their command-line names."""

    name: str
    description: str
    prepare: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


_PAPER_TRAINING = {
    "epochs": 200,
    "batch_size": 2,
    "virtual_batch_multiplier": 8,
    "lr": 5e-4,
    "tune_thresholds": True,
}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="usiigaci",
            description="Usiigaci phase-contrast cells (paper, Table 1): 512x512 crops",
            prepare={"crop_size": "512", "val_fraction": 0.15, "centre": "medoid"},
            train=_PAPER_TRAINING,
        ),
        Preset(
            name="usiigaci-cpu",
            description="Usiigaci on a CPU: the paper's 512x512 field of view on a grid 2x "
            "coarser (256x256 crops), batches of 4 crops with gradients over 2, 150 per epoch",
            prepare={
                "crop_size": "256",
                "downsample": "2",
                "val_fraction": 0.15,
                "centre": "medoid",
            },
            train={
                **_PAPER_TRAINING,
                "batch_size": 4,
                "virtual_batch_multiplier": 2,
                "steps_per_epoch": 150,
            },
        ),
        Preset(
            name="dsb2018",
            description="DSB2018 fluorescence nuclei (paper, Table 1): 256x256 crops",
            prepare={"crop_size": "256", "val_fraction": 0.15, "centre": "medoid"},
            train=_PAPER_TRAINING,
        ),
        Preset(
            name="bbbc010",
            description="BBBC010 worms (paper, Table 1): 256x256 crops, batches of 1",
            prepare={"crop_size": "256", "val_fraction": 0.15, "centre": "medoid"},
            train={**_PAPER_TRAINING, "batch_size": 1, "virtual_batch_multiplier": 1},
        ),
    )
}
