"""Named settings of ``prepare`` and ``train`` that reproduce a published protocol.

``embedseg prepare SRC --out P.zarr --preset NAME`` and ``embedseg train P.zarr --preset
NAME`` use them; options given on the command line win over a preset's values. The values
are the paper's (Lalit et al., MIDL 2021, appendix "Training Details"): object-centred
crops of the paper's size, 15% of the training images held out for validation, Adam at
5e-4 with a polynomial decay over 200 epochs, batches of 2 crops with gradients
accumulated over 8 batches, the best checkpoint by validation AP, and the foreground
threshold tuned on the validation images. ``usiigaci-cpu`` is this project's, for training
without a GPU: the paper's field of view on a grid twice as coarse (``--downsample 2``,
256x256 crops), with more, smaller optimiser steps. ``finetune`` is this project's too, for
``train --from MODEL`` on a few annotated images: it sets only ``train`` options (``prepare``
measures the new images as they are) and needs ``--from``.
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
    needs_model: bool = False
    """Whether ``train`` with this preset needs a model to start from (``--from``)."""


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
        Preset(
            name="finetune",
            description="Fine-tune a trained model (train --from MODEL) on a few images: "
            "learning rate 1e-4, 30 epochs of 50 batches of 2 crops, thresholds tuned",
            # A fifth of the paper's learning rate, so that the first steps do not undo what
            # the model learned, and short epochs, so that a few images are validated often.
            # The trainer has no warm-up. Measured (docs/benchmarks.md, "Fine-tuning with few
            # images", 5 images, 10 epochs): 1e-4 did as well as 5e-4 at IoU 0.5 and better
            # at 0.7, and training all layers better than the decoders alone at the last
            # checkpoint. The 30 epochs are not measured.
            train={
                "epochs": 30,
                "batch_size": 2,
                "virtual_batch_multiplier": 1,
                "lr": 1e-4,
                "steps_per_epoch": 50,
                "tune_thresholds": True,
            },
            needs_model=True,
        ),
    )
}
