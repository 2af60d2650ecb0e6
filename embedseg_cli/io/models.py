"""Where a trained network comes from: a project store, an exported file or the package.

Every source gives the same thing, a :class:`TrainedModel`: the network's weights as arrays
and the attributes the pipeline needs to use them (dimensionality, channels, embedding
scale, pixel spacing, clustering thresholds and the training data's properties), in the
layout of a store checkpoint (docs/store.md).

Each also says where it was read from (:attr:`TrainedModel.provenance`), which a run
fine-tuned from it records as its ``started_from``.

Sources, by what ``path`` is:

- a project store (``P.zarr``): a checkpoint of one of its runs (``best`` by default);
- ``NAME`` or ``builtin:NAME``: a model shipped inside the package (``embedseg models``);
- a compact model file (``.npz``): float16 weights and JSON attributes, no pickle;
- an exported bioimage.io package (``.zip``) or TorchScript file (``.pt``), see ``export``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from numpy.typing import NDArray
from pydantic import ValidationError

from embedseg_cli import __version__
from embedseg_cli.errors import InputError
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.method.model import SIZE_MULTIPLE, BranchedERFNet
from embedseg_cli.records import (
    CHECKPOINT_FORMAT,
    BuiltinOrigin,
    CheckpointRecord,
    FileOrigin,
    ModelOrigin,
    StoreOrigin,
)

__all__ = [
    "BuiltinModel",
    "TrainedModel",
    "builtin_models",
    "checkpoint_record",
    "load_network",
    "read_compact",
    "read_model",
    "resolve_device",
    "state_dict_of",
    "write_compact",
    "write_torchscript",
]

logger = logging.getLogger(__name__)


_ATTRS_KEY = "__attrs__"
_PRETRAINED = "pretrained"
_TORCHSCRIPT_ATTRS = "embedseg.json"
"""Name of the extra file of an exported TorchScript model that holds its attributes."""
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


@dataclass(frozen=True)
class TrainedModel:
    """A trained network's weights and what the pipeline needs to run it.

    Raises :class:`InputError` where the attributes are not those of an embedseg model of a
    format this version reads.
    """

    tensors: dict[str, NDArray[Any]]
    """The network's state dict as arrays (keys as ``BranchedERFNet.state_dict()``)."""
    attrs: dict[str, Any]
    """Checkpoint attributes as stored (docs/store.md), carried unchanged into exports."""
    origin: str
    """Where it came from, for messages and logs."""
    provenance: ModelOrigin | None = field(default=None, compare=False)
    """Where :func:`read_model` read it from: the built-in model, the file (with its
    SHA-256) or the store's checkpoint. A run that starts from this model records it."""
    record: CheckpointRecord = field(init=False, repr=False, compare=False)
    """The attributes, validated: what the pipeline reads."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "record", checkpoint_record(self.attrs, self.origin))

    @property
    def ndim(self) -> int:
        """2 or 3."""
        return self.record.model.ndim

    @property
    def channels(self) -> int:
        """Input channels the network expects."""
        return self.record.model.in_channels


def checkpoint_record(attrs: dict[str, Any], origin: str) -> CheckpointRecord:
    """The validated attributes of a checkpoint read from ``origin``.

    Raises
    ------
    InputError
        Where they are of another format or not those of an embedseg model.
    """
    if attrs.get("format") != CHECKPOINT_FORMAT:
        msg = (
            f"{origin}: checkpoint format {attrs.get('format')} is not the format "
            f"{CHECKPOINT_FORMAT} this embedseg reads"
        )
        raise InputError(msg)
    try:
        return CheckpointRecord.model_validate(attrs)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        msg = (
            f"{origin}: its attributes are not those of an embedseg model ({where}: "
            f"{problem['msg']}): use a model written by embedseg train or export"
        )
        raise InputError(msg) from None


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside the package."""

    name: str
    path: Path
    description: str
    training_data: str
    license: str
    scores: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name`` (``auto``: CUDA, else Apple's MPS, else the CPU)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        msg = f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
        raise InputError(msg) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {name!r} asked for but CUDA is not available: use --device cpu"
        raise InputError(msg)
    return device


def read_model(
    path: str | Path, *, run: str | None = None, checkpoint: str = "best"
) -> TrainedModel:
    """Read a trained model from a store, a built-in name or an exported file.

    Raises
    ------
    InputError
        Where ``path`` is none of these, or the file is not a model this version reads.
    StoreError
        Where a store holds no such checkpoint.
    """
    text = str(path)
    builtin = {model.name: model for model in builtin_models()}
    name = text.removeprefix("builtin:")
    if name in builtin and (text.startswith("builtin:") or not Path(text).exists()):
        model = read_compact(builtin[name].path)
        origin: ModelOrigin = BuiltinOrigin(
            name=name,
            version=__version__,
            sha256=_file_sha256(builtin[name].path),
            started_from=model.record.started_from,
        )
        return dataclasses.replace(model, provenance=origin)
    if text.startswith("builtin:"):
        msg = f"no built-in model {name!r}: `embedseg models` lists them ({', '.join(builtin)})"
        raise InputError(msg)
    path = Path(path)
    if not path.exists():
        msg = (
            f"model {path} does not exist: give a project store (made by `embedseg prepare` "
            "and `embedseg train`), an exported model (.zip, .pt, .npz) or a built-in model "
            "name (`embedseg models` lists them)"
        )
        raise InputError(msg)
    if path.is_dir():
        if not is_project_store(path):
            msg = f"{path} is not an embedseg project store: give one made by `embedseg prepare`"
            raise InputError(msg)
        tensors, attrs = ProjectStore.open(path).read_checkpoint(run, checkpoint)
        weights = {
            k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")
        }
        model = TrainedModel(weights, attrs, f"{path} ({attrs.get('run')}/{checkpoint})")
        origin = StoreOrigin(
            path=str(path.resolve()),
            run=str(model.record.run),
            checkpoint="last" if checkpoint == "last" else "best",
            epoch=model.record.epoch,
            started_from=model.record.started_from,
        )
        return dataclasses.replace(model, provenance=origin)
    readers = {".npz": read_compact, ".zip": _read_bioimageio, ".pt": _read_torchscript}
    reader = readers.get(path.suffix)
    if reader is None:
        msg = (
            f"{path} is not a model embedseg reads: give a project store, an exported model "
            "(.zip, .pt, .npz) or a built-in model name"
        )
        raise InputError(msg)
    model = reader(path)
    origin = FileOrigin(
        path=str(path.resolve()),
        sha256=_file_sha256(path),
        started_from=model.record.started_from,
    )
    return dataclasses.replace(model, provenance=origin)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_network(model: TrainedModel, device: torch.device) -> BranchedERFNet:
    """Rebuild the network of ``model`` on ``device``, in eval mode.

    Raises
    ------
    InputError
        Where the attributes are of another format, the weights do not fit the network or
        are not all finite (NaN or infinite: the training diverged).
    """
    ndim = model.ndim
    if ndim not in (2, 3):
        msg = f"{model.origin}: a {ndim}D model is not a model embedseg reads (2D or 3D)"
        raise InputError(msg)
    _check_finite(model.tensors, model.origin, "train again or use another checkpoint")
    network = BranchedERFNet(model.channels, 2 if ndim == 2 else 3)
    state = {
        k: torch.from_numpy(np.asarray(v, dtype=_dtype_of(v))) for k, v in model.tensors.items()
    }
    try:
        network.load_state_dict(state)
    except RuntimeError:
        msg = (
            f"{model.origin} does not hold the weights of a {model.ndim}D BranchedERFNet with "
            f"{model.channels} channel(s): it is corrupt or from another program; train again"
        )
        raise InputError(msg) from None
    return network.to(device).eval()


def _check_finite(tensors: dict[str, NDArray[Any]], origin: str, fix: str) -> None:
    """Refuse weights with NaN or infinite values: such a network predicts nothing."""
    for name, value in tensors.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            msg = f"{origin}: its weight {name} holds NaN or infinite values, so the model is unusable: {fix}"
            raise InputError(msg)


def _dtype_of(array: NDArray[Any]) -> type[np.generic]:
    # Compact files keep weights in float16; the network computes in float32.
    return np.float32 if np.issubdtype(array.dtype, np.floating) else array.dtype.type


def write_compact(model: TrainedModel, path: Path, **metadata: Any) -> Path:
    """Write ``model`` as a compact file: float16 weights and JSON attributes, no pickle.

    Raises :class:`InputError`, writing nothing, where a weight is not finite in float16.
    ``metadata`` (description, training data, license, scores ...) goes into the
    attributes under ``builtin``.
    """
    attrs = {**model.attrs, "builtin": metadata} if metadata else dict(model.attrs)
    with np.errstate(over="ignore"):
        arrays: dict[str, Any] = {
            k: v.astype(np.float16) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in model.tensors.items()
        }
    # A weight beyond float16's range (65504) would be written as infinite.
    _check_finite(arrays, model.origin, "export it in another format (torchscript, bioimageio)")
    encoded = np.frombuffer(json.dumps(attrs).encode(), dtype=np.uint8)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **{**arrays, _ATTRS_KEY: encoded})
    return path


def read_compact(path: Path) -> TrainedModel:
    """Read a file written by :func:`write_compact`.

    Raises
    ------
    InputError
        Where the file is not such a file.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        # NumPy's text suggests allow_pickle: never offered here, the file is not ours.
        logger.debug("%s: %s", path, error)
        msg = (
            f"{path} is not a model file of a known kind (not a compact embedseg model, a "
            "NumPy archive of arrays): give a file written by `embedseg export`, a project "
            "store or a built-in model name"
        )
        raise InputError(msg) from None
    if _ATTRS_KEY not in arrays:
        msg = f"{path} is a NumPy archive but not an embedseg model: it has no attributes"
        raise InputError(msg)
    attrs = json.loads(arrays.pop(_ATTRS_KEY).tobytes().decode())
    return TrainedModel(arrays, attrs, str(path))


def builtin_models() -> list[BuiltinModel]:
    """The models shipped in the package, by name."""
    folder = resources.files("embedseg_cli") / _PRETRAINED
    if not folder.is_dir():
        return []
    models = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".npz"):
            continue
        path = Path(str(entry))
        with np.load(path, allow_pickle=False) as archive:
            attrs = json.loads(archive[_ATTRS_KEY].tobytes().decode())
        meta = attrs.get("builtin", {})
        models.append(
            BuiltinModel(
                name=path.stem,
                path=path,
                description=str(meta.get("description", "")),
                training_data=str(meta.get("training_data", "")),
                license=str(meta.get("license", "")),
                scores=dict(meta.get("scores", {})),
            )
        )
    return models


def state_dict_of(model: TrainedModel) -> dict[str, torch.Tensor]:
    """The network's state dict as float32 (and integer) CPU tensors, checked against the network.

    Raises
    ------
    InputError
        Where the weights do not fit the network the attributes describe.
    """
    network = load_network(model, torch.device("cpu"))
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def write_torchscript(model: TrainedModel, path: Path) -> None:
    """Write the network of ``model`` as one TorchScript file, with its attributes inside.

    The network is traced (its Python-level input checks are not part of the trace, so the
    file accepts any batch size and any spatial extent that is a multiple of 8). The
    attributes are stored as the extra file ``embedseg.json``, which
    :func:`read_model` reads back. Writes straight to ``path``: callers stage it.
    """
    network = load_network(model, torch.device("cpu"))
    example = torch.zeros(1, model.channels, *([2 * SIZE_MULTIPLE] * model.ndim))
    with warnings.catch_warnings():
        # Tracing is what TorchScript offers for this network (it is not scriptable); torch
        # warns that tracing is deprecated and that the shape checks are not recorded.
        warnings.simplefilter("ignore")
        # The tests compare the file's outputs with the network's; the tracer's own check
        # (a second run and a graph comparison) would triple the time.
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            network, example, check_trace=False
        )
        torch.jit.save(
            traced, str(path), _extra_files={_TORCHSCRIPT_ATTRS: json.dumps(model.attrs)}
        )


def _read_torchscript(path: Path) -> TrainedModel:
    extra = {_TORCHSCRIPT_ATTRS: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location="cpu", _extra_files=extra
            )
    except (RuntimeError, ValueError, OSError) as error:
        logger.debug("%s: %s", path, error)
        kind = "a PyTorch pickle, which embedseg never loads" if _is_torch_pickle(path) else ""
        msg = (
            f"{path} is not a model file of a known kind (not a TorchScript file"
            f"{'; it is ' + kind if kind else ''}): give a file written by `embedseg export "
            "model --format torchscript`, a bioimage.io package or a project store"
        )
        raise InputError(msg) from None
    if not extra[_TORCHSCRIPT_ATTRS]:
        msg = (
            f"{path} is a TorchScript file without embedseg's attributes: export it with "
            "`embedseg export model P.zarr --format torchscript`"
        )
        raise InputError(msg)
    attrs = json.loads(extra[_TORCHSCRIPT_ATTRS])
    tensors = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    return TrainedModel(tensors, attrs, str(path))


def _is_torch_pickle(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` archive (a pickle) rather than TorchScript."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any(
        n.endswith("/constants.pkl") for n in names
    )


def _read_bioimageio(path: Path) -> TrainedModel:
    """Read a bioimage.io package written by ``embedseg export``: no bioimageio library needed.

    The attributes are the description's ``config.embedseg``; the weights are the
    ``pytorch_state_dict`` entry (read with ``torch.load(weights_only=True)``, which unpickles
    tensors and plain containers only) or else the ``torchscript`` entry. Each weights file
    is checked against the SHA-256 the description gives.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            rdf_name = next((n for n in _RDF_NAMES if n in names), None)
            if rdf_name is None:
                msg = f"{path} is a zip file but not a bioimage.io package (it has no rdf.yaml)"
                raise InputError(msg)
            description = yaml.safe_load(archive.read(rdf_name))
            attrs = (description.get("config") or {}).get("embedseg")
            if not isinstance(attrs, dict):
                msg = (
                    f"{path} is a bioimage.io package but not one exported by embedseg (its "
                    "config has no embedseg section): export the model with `embedseg export`"
                )
                raise InputError(msg)
            weights = description.get("weights") or {}
            for kind in ("pytorch_state_dict", "torchscript"):
                entry = weights.get(kind)
                if entry and str(entry.get("source")) in names:
                    data = archive.read(str(entry["source"]))
                    expected = entry.get("sha256")
                    if expected and hashlib.sha256(data).hexdigest() != expected:
                        msg = f"{path}: its {kind} weights do not match their SHA-256: the file is corrupt, export it again"
                        raise InputError(msg)
                    return TrainedModel(_weights_from(data, kind), attrs, str(path))
    except (OSError, zipfile.BadZipFile, yaml.YAMLError) as error:
        msg = f"{path} cannot be read as a bioimage.io package ({error}): export it again"
        raise InputError(msg) from None
    msg = f"{path} holds neither pytorch_state_dict nor torchscript weights: export it again"
    raise InputError(msg)


def _weights_from(data: bytes, kind: str) -> dict[str, NDArray[Any]]:
    try:
        if kind == "pytorch_state_dict":
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
                state = scripted.state_dict()
    except (RuntimeError, ValueError, pickle.UnpicklingError) as error:
        # torch's text suggests weights_only=False, which would run the file's code: never.
        logger.debug("%s weights: %s", kind, error)
        msg = f"its {kind} weights are not plain tensors of a known kind (embedseg loads nothing else)"
        raise OSError(msg) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"its {kind} weights are not a state dict of tensors"
        raise OSError(msg)
    # The package's network wraps BranchedERFNet (``network.``) with the clustering.
    prefix = "network."
    if state and all(str(k).startswith(prefix) for k in state):
        state = {str(k).removeprefix(prefix): v for k, v in state.items()}
    return {str(k): v.detach().cpu().numpy() for k, v in state.items()}
