"""``export model``: a trained model as a bioimage.io package, a TorchScript or an ONNX file.

:func:`export_model` checks the output, reads the model and writes the format asked for,
all or nothing (:mod:`embedseg_cli.export.outputs`); the bioimage.io package is built in
:mod:`embedseg_cli.export.bioimageio`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from embedseg_cli.config import MODEL_SUFFIXES, ExportModelConfig, ModelFormat
from embedseg_cli.errors import InputError
from embedseg_cli.export.bioimageio import EXPORT_EXTRA, spatial_axes, write_bioimageio
from embedseg_cli.export.outputs import Output, claim, staged_output
from embedseg_cli.io.models import (
    TrainedModel,
    load_network,
    read_model,
    state_dict_of,
    write_torchscript,
)
from embedseg_cli.progress import NullProgress, Progress

__all__ = ["ModelExportReport", "export_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelExportReport:
    """What ``export_model`` wrote."""

    format: str
    out: str
    origin: str
    ndim: int
    channels: int
    seconds: float


def export_model(
    config: ExportModelConfig, *, progress: Progress | None = None
) -> ModelExportReport:
    """Write a trained model as a bioimage.io package, a TorchScript or an ONNX file.

    The bioimage.io package (spec format 0.5, built and checked with ``bioimageio.spec``)
    produces instance labels by itself. It holds:

    - the input's preprocessing, the training normalisation: per image and channel, the
      percentiles the training used (1 and 99.8) map to 0 and 1 (``scale_range``);
    - ``pytorch_state_dict`` weights with the architecture's source (``model.py``:
      embedseg's ``model.py`` followed by :func:`cluster_instances` and
      :class:`EmbedSegInstances`), and the same network as ``torchscript`` weights (the
      traced ``BranchedERFNet`` inside the scripted clustering). Both give uint32 labels,
      one channel, numbered by their seeds' positions as ``embedseg predict`` numbers them.

      Why the clustering is in the network rather than a postprocessing step: bioimage.io
      has no built-in step for EmbedSeg's clustering, and its ``custom`` postprocessing
      (a Python file in the package) must keep the tensor's shape in ``bioimageio.core``
      (0.11 asserts it), so it cannot turn the ``2 * ndim + 1`` raw channels into one
      channel of labels; a tensor that carried the labels beside unused channels would
      mislead every consumer. Inside the forward pass, as InstanSeg's packages do it, the
      clustering runs in every consumer that runs TorchScript or PyTorch (Fiji's
      deepImageJ, QuPath, ilastik, ``bioimageio.core``), and ``bioimageio.core``'s test
      checks it on the test image. :func:`cluster_instances` is a transcription of
      :func:`embedseg_cli.method.clustering.find_instances` into TorchScript-compatible torch;
      the tests check that both give the same labels;
    - a test input (an image of the store, cropped to a multiple of 8) with its expected
      labels, computed here with embedseg's pipeline, and a cover picture of that input
      beside its labels;
    - authors, licence, the citation of the EmbedSeg paper, and every attribute of the
      checkpoint (data properties, thresholds, embedding scale) under ``config.embedseg``,
      which ``embedseg predict --model model.zip`` reads back.

    Raises
    ------
    InputError
        Where the model cannot be read, the export libraries are missing, no test image is
        available for a bioimage.io package, or ``out`` is an input or holds one.
    StoreError
        Where the store has no trained checkpoint.
    OutputExistsError
        Where ``out`` exists and ``overwrite`` is not set, or ``out`` is a folder (only a
        file is ever replaced).
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    suffix = MODEL_SUFFIXES[config.format]
    if config.out.suffix.lower() != suffix:
        # Exit 1 like predict's --out x.png: the value is well formed, the file is wrong.
        msg = (
            f"--out {config.out}: a {config.format.value} model is written to a {suffix} "
            f"file: give --out {config.out.with_suffix(suffix).name}"
        )
        raise InputError(msg)
    output = Output(f"a {config.format.value} model (a file)", "file")
    model_path = Path(config.model)
    inputs = {"MODEL": model_path if model_path.exists() else None, "--image": config.image}
    claim(config.out, config.overwrite, output, inputs)
    trained = read_model(config.model, run=config.run, checkpoint=config.checkpoint)
    state_dict_of(trained)  # fails early, with a clear message, on weights that do not fit
    progress.start(f"Exporting {config.format.value}", total=1)
    with staged_output(config.out, output) as staging:
        if config.format == ModelFormat.TORCHSCRIPT:
            write_torchscript(trained, staging)
        elif config.format == ModelFormat.ONNX:
            _write_onnx(trained, staging)
        else:
            write_bioimageio(trained, staging, config)
    progress.advance()
    progress.finish()
    seconds = time.perf_counter() - started
    logger.info("wrote %s (%s) in %.1f s", config.out, config.format.value, seconds)
    return ModelExportReport(
        config.format.value,
        str(config.out),
        trained.origin,
        trained.ndim,
        trained.channels,
        seconds,
    )


def _write_onnx(trained: TrainedModel, path: Path) -> None:
    """The network as ONNX (opset 17), the attributes as metadata ``embedseg``."""
    if importlib.util.find_spec("onnx") is None:
        msg = f"--format onnx needs the onnx package: {EXPORT_EXTRA}"
        raise InputError(msg)
    import onnx  # noqa: PLC0415 (optional dependency)

    network = load_network(trained, torch.device("cpu"))
    example = torch.zeros(1, trained.channels, *([16] * trained.ndim))
    dynamic = {0: "batch", **{2 + k: axis for k, axis in enumerate(spatial_axes(trained.ndim))}}
    with warnings.catch_warnings():
        # torch's export-based exporter specialises the batch axis of this network and
        # needs onnxscript; the TorchScript-based one (deprecated, still supported) keeps
        # every axis dynamic. It warns about both, and that shape checks are not traced.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["raw"],
            dynamic_axes={"image": dynamic, "raw": dynamic},
            opset_version=17,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "embedseg", json.dumps(trained.attrs)
    proto.producer_name = "embedseg-cli"
    onnx.save(proto, str(path))
