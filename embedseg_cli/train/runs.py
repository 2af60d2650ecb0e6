"""A run's identity in the store: its name, its claim on that name, and what ``resume`` keeps.

A new run never silently replaces an earlier one of the same name (``overwrite`` does, at
the new run's first checkpoint). ``resume`` continues a run only on the data it was trained
on, takes the run's options for those the call leaves out, and refuses options that would
make the run's checkpoints describe different models.
"""

from __future__ import annotations

import time
from typing import Any

from embedseg_cli.config import TrainConfig
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.records import CheckpointRecord, DataProperties

__all__ = ["check_resumable", "claim_run", "new_run_name", "resumed_config"]

_FIXED_OPTIONS = ("embedding_scale", "seed", "tune_thresholds", "weight_decay", "train_layers")
"""Options that define a run's model (its output scale, its initial weights and the data
order, how its thresholds are chosen, its optimiser and the layers it trains): ``resume``
refuses other values. The model a run started from (``from_model``) is the run's too:
``resume`` takes it from the run, and the configuration refuses it beside ``resume``."""
_MACHINE_OPTIONS = ("device", "workers")
"""Options about the machine, not the run: ``resume`` does not take them from the run."""
_NOT_RUN_OPTIONS = ("version", "store", "run", "resume", "overwrite", *_MACHINE_OPTIONS)
_FIXED_DATA = (
    "ndim",
    "channels",
    "voxel_size",
    "anisotropy",
    "foreground_weight",
    "crop_size",
    "centre",
    "normalisation",
    "downsample",
)
"""Data properties the network and the loss depend on: a store prepared again with other
values cannot continue a run."""


def check_resumable(record: CheckpointRecord, props: DataProperties, run: str) -> None:
    """Refuse to resume the run of ``record`` on a store whose data it was not trained on.

    Raises
    ------
    InputError
        Where the store's dimensions, channels or any of the data properties the network and
        the loss depend on differ from the run's.
    """
    spec = record.model
    if spec.ndim != props.ndim or spec.in_channels != props.channels:
        msg = (
            f"checkpoint {run}/last is a {spec.ndim}D model of {spec.in_channels} "
            f"channel(s) but the store holds {props.ndim}D images of {props.channels}: "
            "resume it on the store it was trained on, or start a new --run"
        )
        raise InputError(msg)
    trained_on = record.data.model_dump(mode="json")
    now = props.model_dump(mode="json")
    changed = [k for k in _FIXED_DATA if k in trained_on and trained_on[k] != now[k]]
    if changed:
        differences = ", ".join(f"{k} {trained_on[k]} then, {now[k]} now" for k in changed)
        msg = (
            f"the store was prepared again since run {run} started ({differences}): resume "
            "it on the data it was trained on, or start a new --run"
        )
        raise InputError(msg)


def _spell(field: str, value: object) -> str:
    """A config value as the command line writes it (``--embedding-scale 1024``).

    Examples
    --------
    >>> _spell("embedding_scale", 1024.0), _spell("learning_rate", 5e-4)
    ('--embedding-scale 1024', '--lr 0.0005')
    >>> _spell("tune_thresholds", False)
    '--no-tune-thresholds'
    """
    option = "--lr" if field == "learning_rate" else "--" + field.replace("_", "-")
    if isinstance(value, bool):
        return option if value else "--no-" + option.removeprefix("--")
    return f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}"


def resumed_config(
    config: TrainConfig, record: CheckpointRecord, store: ProjectStore, run: str
) -> TrainConfig:
    """``config`` with the run's values for the options it does not set.

    Raises
    ------
    InputError
        Where ``config`` sets an option that defines the model to another value than the run.
    """
    recorded = {**record.config, "embedding_scale": record.model.embedding_scale}
    updates: dict[str, Any] = {}
    for field in TrainConfig.model_fields:
        if field in _NOT_RUN_OPTIONS or field not in recorded:
            continue
        value, before = getattr(config, field), recorded[field]
        if field not in config.model_fields_set:
            updates[field] = before
        elif field in _FIXED_OPTIONS and value != before:
            option = _spell(field, value).split(" ")[0]
            msg = (
                f"run {run} in {store.path} was trained with {_spell(field, before)}, not "
                f"{_spell(field, value)}, and {option} defines the model: leave it out to keep "
                "the run's value, or start a new --run"
            )
            raise InputError(msg)
    return config.model_copy(update=updates)


def _run_exists(store: ProjectStore, run: str) -> bool:
    return bool(store.checkpoint_tags(run) or store.run_metrics(run))


def new_run_name(store: ProjectStore) -> str:
    """``run-`` and the start time, with a suffix where a run of that name exists."""
    base = time.strftime("run-%Y%m%d-%H%M%S")
    name, number = base, 1
    while _run_exists(store, name):
        number += 1
        name = f"{base}-{number}"
    return name


def claim_run(store: ProjectStore, run: str, *, overwrite: bool) -> bool:
    """Whether the new run ``run`` replaces an earlier one (allowed only with ``overwrite``).

    Raises
    ------
    OutputExistsError
        Where the store has a run of that name and ``overwrite`` is not set.
    """
    if not _run_exists(store, run):
        return False
    if not overwrite:
        msg = (
            f"{store.path} already has a training run {run}: pass --resume to continue it, "
            "--run OTHER for a new run, or --overwrite to replace it"
        )
        raise OutputExistsError(msg)
    return True
