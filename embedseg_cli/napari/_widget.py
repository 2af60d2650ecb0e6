"""The segmentation dock widget: the selected Image layer through ``predict``, into a Labels layer.

The widget runs :func:`~embedseg_cli.predict.predict_array` (the ``predict`` workflow on a
scratch copy of the layer, block by block like the command line) in a worker thread, shows
its progress and stops it at the next task when Cancel is pressed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

import napari
import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from numpy.typing import NDArray
from pydantic import ValidationError
from qtpy.QtCore import QObject, Signal

from embedseg_cli.errors import EmbedsegError
from embedseg_cli.io.models import builtin_models
from embedseg_cli.io.units import micrometres_per
from embedseg_cli.predict import DEFAULT_MODEL, predict_array
from embedseg_cli.progress import CancelledError

__all__ = ["SegmentWidget"]

logger = logging.getLogger(__name__)

STORE = "project store..."
"""The model choice that asks for a project store (its newest run's best checkpoint)."""
MODEL_FILE = "model file..."
"""The model choice that asks for an exported model (``embedseg export model``)."""
MODEL_SUFFIXES = "*.zip *.pt *.npz"
"""The exported model files ``predict --model`` reads."""
DEFAULT = "default"
"""The object-size choice that leaves it to predict: auto for a built-in model, else off."""
DIAMETER = "diameter"
"""The object-size choice that gives the objects' diameter in pixels."""


class _ProgressSignals(QObject):  # type: ignore[misc]
    """Carries the progress from the worker thread to the widget (queued by Qt)."""

    started = Signal(str, int)
    advanced = Signal(int)


class _WidgetProgress:
    """A :class:`~embedseg_cli.progress.Progress` that feeds the widget and can be cancelled."""

    def __init__(self, signals: _ProgressSignals, cancel: threading.Event) -> None:
        self._signals = signals
        self._cancel = cancel

    def _check(self) -> None:
        if self._cancel.is_set():
            raise CancelledError

    def start(self, description: str, total: int) -> None:
        self._check()
        self._signals.started.emit(description, total)

    def advance(self, steps: int = 1) -> None:
        self._signals.advanced.emit(steps)
        self._check()

    def finish(self) -> None:
        """Nothing to do: the next task, or the end of the run, resets the bar."""


class SegmentWidget(Container):  # type: ignore[misc]
    """Segment an Image layer with an EmbedSeg model; the labels become a Labels layer.

    The labels layer is called "<image> labels" and has the image layer's scale and
    translation; a second run on the same image replaces its data.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker: Any = None
        self._cancel = threading.Event()
        self._signals = _ProgressSignals()
        self._signals.started.connect(self._on_started)
        self._signals.advanced.connect(self._on_advanced)

        self.image = cast(ComboBox, create_widget(annotation=napari.layers.Image, label="image"))
        names = [model.name for model in builtin_models()]
        self.model = ComboBox(
            label="model",
            choices=[*names, STORE, MODEL_FILE],
            value=DEFAULT_MODEL if DEFAULT_MODEL in names else STORE,
            tooltip="A built-in model, a project store (its newest run, best checkpoint) "
            "or a model file written by `embedseg export model`.",
        )
        self.model_path = FileEdit(label="path", mode=FileDialogMode.EXISTING_DIRECTORY)
        self.seed_threshold = FloatSpinBox(
            label="seed threshold",
            value=0.9,
            min=0.01,
            max=0.99,
            step=0.05,
            tooltip="Objects start only at seeds above this.",
        )
        self.foreground_threshold = FloatSpinBox(
            label="foreground threshold",
            value=0.0,
            min=0.0,
            max=0.99,
            step=0.05,
            tooltip="Seed score above which a pixel is foreground.",
        )
        # A spin box of floats shown without decimals: the integer spin box magicgui makes
        # cannot show "model's" in place of its lowest value.
        self.min_object_size = FloatSpinBox(
            label="min object size",
            value=0,
            min=0,
            max=1e9,
            step=10,
            tooltip="Smallest object kept, in pixels or voxels.",
        )
        self.min_object_size.native.setDecimals(0)
        # The lowest value of these two stands for "the model's own" (None in PredictConfig).
        self.foreground_threshold.native.setSpecialValueText("model's")
        self.min_object_size.native.setSpecialValueText("model's")
        # The image is resampled to the model's voxel size (which the layer's scale and
        # units give) and, with these, so that its objects have the training data's size.
        self.object_size = ComboBox(
            label="object size",
            choices=[DEFAULT, "auto", "off", DIAMETER],
            value=DEFAULT,
            tooltip="Resample the image so that its objects have the size the model learned: "
            "auto estimates their diameter, off keeps the image's scale, diameter gives it "
            "in pixels. default: auto for a built-in model, off for others.",
        )
        self.object_diameter = FloatSpinBox(
            label="diameter",
            value=20.0,
            min=1.0,
            max=1e4,
            step=1.0,
            tooltip="The typical diameter of the objects in the image, in pixels.",
        )
        self.tta = CheckBox(
            text="test-time augmentation",
            value=True,
            tooltip="Average over the 8 (2D) or 16 (3D) rotations and flips: better, slower.",
        )
        self.segment_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1, visible=False)
        self.status = Label(label="", value="")
        self.extend(
            [
                self.image,
                self.model,
                self.model_path,
                self.seed_threshold,
                self.foreground_threshold,
                self.min_object_size,
                self.object_size,
                self.object_diameter,
                self.tta,
                self.segment_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self.model.changed.connect(self._on_model_changed)
        self.object_size.changed.connect(self._on_object_size_changed)
        self._on_object_size_changed()
        self.segment_button.changed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        self._on_model_changed()

    @property
    def running(self) -> bool:
        """Whether a segmentation is running."""
        return self._worker is not None

    def model_choice(self) -> str:
        """What ``predict --model`` gets: a built-in model's name or a path.

        Raises
        ------
        ValueError
            Where a project store or a model file is asked for and no path is given.
        """
        choice = str(self.model.value)
        if choice not in (STORE, MODEL_FILE):
            return choice
        path = self.model_path.value
        if path is None or str(path) in ("", "."):
            what = "project store (a .zarr folder)" if choice == STORE else "model file"
            msg = f"choose the {what} under path"
            raise ValueError(msg)
        return str(path)

    def object_size_choice(self) -> str | float | None:
        """What ``predict --object-size`` gets: ``auto``, ``off``, a diameter or None (default)."""
        choice = str(self.object_size.value)
        if choice == DEFAULT:
            return None
        if choice == DIAMETER:
            return float(self.object_diameter.value)
        return choice

    def segment(self) -> None:
        """Start segmenting the chosen image layer in a worker thread."""
        layer = self.image.value
        if self.running:
            return
        if layer is None:
            self._set_status("add an image layer first")
            return
        try:
            data, axes = _pixels(layer)
            model = self.model_choice()
        except ValueError as error:
            self._set_status(str(error))
            return
        spatial = sum(axis != "C" for axis in axes)
        voxel_size = _voxel_size(layer, spatial)
        options = {
            "model": model,
            "tta": bool(self.tta.value),
            "seed_threshold": float(self.seed_threshold.value),
            "foreground_threshold": float(self.foreground_threshold.value) or None,
            "min_object_size": round(self.min_object_size.value) or None,
            "object_size": self.object_size_choice(),
        }
        target = {
            "name": f"{layer.name} labels",
            "scale": tuple(layer.scale[-spatial:]),
            "translate": tuple(layer.translate[-spatial:]),
        }
        self._cancel.clear()
        self._worker = create_worker(
            predict_array,
            data,
            axes=axes,
            voxel_size=voxel_size,
            name=layer.name,
            progress=_WidgetProgress(self._signals, self._cancel),
            _connect={
                "returned": lambda labels: self._add_labels(labels, target),
                "errored": self._on_error,  # also keeps napari from raising it again
                "finished": self._on_finished,
            },
            _start_thread=False,
            **options,
        )
        self.segment_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.visible = True
        self.progress.value = 0
        self._set_status(f"segmenting {layer.name}: loading the model")
        self._worker.start()

    def cancel(self) -> None:
        """Stop the running segmentation at its next task; no labels are added."""
        if self.running:
            self._cancel.set()
            self.cancel_button.enabled = False
            self._set_status("cancelling: waiting for the running tasks to finish")

    def _add_labels(self, labels: NDArray[np.uint32], target: dict[str, Any]) -> None:
        name = target["name"]
        existing = next((layer for layer in self._viewer.layers if layer.name == name), None)
        if isinstance(existing, napari.layers.Labels):
            existing.data = labels
            existing.scale, existing.translate = target["scale"], target["translate"]
        else:
            self._viewer.add_labels(
                labels, name=name, scale=target["scale"], translate=target["translate"]
            )
        self._set_status(f"{name}: {int(labels.max(initial=0))} objects")

    def _on_error(self, error: BaseException) -> None:
        if isinstance(error, CancelledError):
            self._set_status("cancelled: no labels added")
            return
        if isinstance(error, EmbedsegError | ValidationError):
            message = str(error)
        else:
            logger.error("segmentation failed", exc_info=error)
            message = f"{type(error).__name__}: {error}"
        self._set_status(f"failed: {message}")
        show_error(f"embedseg: {message}")

    def _on_finished(self) -> None:
        self._worker = None
        self.segment_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.visible = False

    def _on_started(self, description: str, total: int) -> None:
        self.progress.max = max(1, total)
        self.progress.value = 0
        self.progress.label = description
        if not self._cancel.is_set():
            self._set_status(description)

    def _on_advanced(self, steps: int) -> None:
        self.progress.value = min(self.progress.max, self.progress.value + steps)

    def _on_model_changed(self) -> None:
        choice = self.model.value
        self.model_path.visible = choice in (STORE, MODEL_FILE)
        if choice == STORE:
            self.model_path.mode = FileDialogMode.EXISTING_DIRECTORY
            self.model_path.filter = None
        elif choice == MODEL_FILE:
            self.model_path.mode = FileDialogMode.EXISTING_FILE
            self.model_path.filter = MODEL_SUFFIXES

    def _on_object_size_changed(self) -> None:
        self.object_diameter.visible = self.object_size.value == DIAMETER

    def _set_status(self, text: str) -> None:
        self.status.value = text


def _pixels(layer: napari.layers.Image) -> tuple[Any, str]:
    """The full-resolution pixels of ``layer`` and their axes.

    Raises
    ------
    ValueError
        For a layer that is neither an image nor a volume (with RGB colours).
    """
    data = layer.data[0] if layer.multiscale else layer.data
    axes = ({3: "YXC", 4: "ZYXC"} if layer.rgb else {2: "YX", 3: "ZYX"}).get(data.ndim)
    if axes is None:
        msg = (
            f"{layer.name} has {data.ndim} axes: segment a 2D image or a 3D volume "
            "(split time points or channels into layers first)"
        )
        raise ValueError(msg)
    return data, axes


def _voxel_size(layer: Any, spatial: int) -> tuple[float, ...] | None:
    """The layer's voxel size in micrometres (ZYX), None where its units are no lengths.

    napari's default units are pixels: a scale in pixels says nothing about the voxel size,
    so the image is not resampled to the model's (as predict treats a file without units).
    """
    scale = [float(s) for s in layer.scale[-spatial:]]
    units = [str(u) for u in getattr(layer, "units", ())][-spatial:]
    factors = [micrometres_per(u) for u in units]
    if len(factors) != spatial or any(f is None for f in factors):
        return None
    return tuple(s * cast(float, f) for s, f in zip(scale, factors, strict=True))
