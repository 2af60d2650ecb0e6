"""What a training checkpoint holds: its tensors and its attributes, and reading them back.

A checkpoint is one array per tensor, never pickled: the weights (``model.*``), for ``last``
also the optimiser state (``optimizer.<parameter>.<name>``) and torch's random state
(``rng.torch``), so that ``resume`` continues exactly. Its attributes are a
:class:`~embedseg_cli.records.CheckpointRecord` with everything prediction needs: the data
properties, the model (channels, dimensions, embedding scale and spacing), the thresholds,
and the run's options. The store writes and verifies them; this module says what they are.
"""

from __future__ import annotations

from typing import Any

import torch
from numpy.typing import NDArray

from embedseg_cli.config import TrainConfig
from embedseg_cli.method.inference import ClusterThresholds
from embedseg_cli.records import (
    CheckpointRecord,
    DataProperties,
    ModelOrigin,
    ModelSpec,
    Thresholds,
)

__all__ = [
    "checkpoint_attrs",
    "embedding_spacing",
    "optimizer_groups",
    "restore_state",
    "training_state",
]


def embedding_spacing(props: DataProperties) -> tuple[float, ...]:
    """Pixel spacing per spatial axis relative to x: ``(anisotropy, 1, 1)`` in 3D, ones in 2D."""
    return (props.anisotropy, 1.0, 1.0) if props.ndim == 3 else (1.0, 1.0)


def _model_tensors(model: torch.nn.Module) -> dict[str, NDArray[Any]]:
    return {f"model.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, NDArray[Any]]:
    state = optimizer.state_dict()["state"]
    return {
        f"optimizer.{index}.{key}": torch.as_tensor(value).detach().cpu().numpy()
        for index, values in state.items()
        for key, value in values.items()
    }


def training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, NDArray[Any]]:
    """Everything ``last`` holds to resume exactly: weights, optimiser and random state."""
    return {
        **{k: v.copy() for k, v in _model_tensors(model).items()},
        **{k: v.copy() for k, v in _optimizer_tensors(optimizer).items()},
        "rng.torch": torch.get_rng_state().numpy(),
    }


def restore_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, NDArray[Any]],
    record: CheckpointRecord,
) -> None:
    """Load a ``last`` checkpoint's weights, optimiser and random state (its inverse)."""
    model.load_state_dict(
        {
            k.removeprefix("model."): torch.from_numpy(v)
            for k, v in tensors.items()
            if k.startswith("model.")
        }
    )
    optimizer.load_state_dict(_optimizer_state(tensors, record))
    torch.set_rng_state(torch.from_numpy(tensors["rng.torch"]))


def checkpoint_attrs(
    config: TrainConfig,
    props: DataProperties,
    run: str,
    epoch: int,
    foreground: float,
    best_ap: float | None,
    best_epoch: int | None,
    *,
    started_from: ModelOrigin | None = None,
) -> dict[str, Any]:
    """The attributes of a checkpoint (:class:`CheckpointRecord`) as stored.

    Everything in them about the data is the store's (``props``): a run started from
    another model records only where it started (``started_from``), never that model's
    data properties or thresholds.
    """
    record = CheckpointRecord(
        run=run,
        epoch=epoch,
        best_ap=best_ap,
        best_epoch=best_epoch,
        model=ModelSpec(
            in_channels=props.channels,
            ndim=2 if props.ndim == 2 else 3,
            embedding_scale=config.embedding_scale,
            spacing=embedding_spacing(props),
        ),
        thresholds=Thresholds(
            foreground=foreground,
            seed=ClusterThresholds.seed,
            min_object_size=props.min_object_size,
        ),
        data=props,
        config=config.model_dump(mode="json"),
        started_from=started_from,
    )
    # The store adds ``complete``, ``time``, ``packed`` and ``tensors`` as it writes.
    return record.model_dump(
        mode="json", exclude={"complete", "time", "optimizer", "packed", "tensors", "builtin"}
    )


def optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimiser's parameter groups (learning rate, betas...) as ``last`` stores them."""
    groups = optimizer.state_dict()["param_groups"]
    return [
        {k: v for k, v in g.items() if isinstance(v, int | float | bool | list | tuple | None)}
        for g in groups
    ]


def _optimizer_state(tensors: dict[str, NDArray[Any]], record: CheckpointRecord) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = torch.from_numpy(value)
    return {"state": state, "param_groups": [dict(group) for group in record.optimizer or ()]}
