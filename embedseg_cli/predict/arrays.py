"""Labels for an image held in memory or as a dask array, through :func:`predict` itself.

``predict`` reads its inputs from files, block by block. An array is therefore written to a
scratch OME-Zarr image first (chunk by chunk, so a dask array need not fit in memory), with
its axes and voxel size; :func:`predict` runs on it exactly as on a file named on the
command line, into a scratch OME-Zarr label image, which is read back. The scratch folder
is removed afterwards, whether the run finished, failed or was cancelled.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from numpy.typing import NDArray

from embedseg_cli.config import PredictConfig
from embedseg_cli.io.ome_zarr_image import write_ome_zarr_image
from embedseg_cli.io.volumes import open_volume
from embedseg_cli.io.zarr_meta import NGFF_AXES
from embedseg_cli.predict.workflow import predict
from embedseg_cli.progress import Progress

__all__ = ["predict_array"]

logger = logging.getLogger(__name__)

_FILE_OPTIONS = frozenset(
    {"input", "out", "table", "dry_run", "keep_outputs", "resume", "overwrite", "recluster"}
)
"""PredictConfig fields about files and runs, which an array has none of."""


def predict_array(
    image: NDArray[Any] | da.Array,
    *,
    axes: str,
    voxel_size: Sequence[float] | None = None,
    name: str = "image",
    progress: Progress | None = None,
    scratch: Path | None = None,
    **options: Any,
) -> NDArray[np.uint32]:
    """Predict the instance labels of an image given as an array.

    Parameters
    ----------
    image : ndarray or dask.array.Array
        The image, one axis per letter of ``axes``.
    axes : str
        Its axes, in any order: ``"YX"``, ``"ZYX"``, ``"YXC"`` (RGB), ``"CZYX"``...
    voxel_size : sequence of float, optional
        Pixel size along each spatial axis, in ``ZYX`` order; None where it is unknown
        (the image is then not resampled to the model's voxel size).
    name : str
        What the image is called in messages.
    progress : Progress, optional
        Receives the progress; it may stop the run by raising
        :class:`~embedseg_cli.progress.CancelledError`.
    scratch : Path, optional
        Folder for the scratch copy of the image and the labels (about the size of the
        image plus the network outputs). Default: the system's temporary folder.
    **options
        Any other field of :class:`~embedseg_cli.config.PredictConfig`: ``model``,
        ``tta``, ``seed_threshold``, ``foreground_threshold``, ``min_object_size``,
        ``device``, ``tile_size``...

    Returns
    -------
    ndarray of uint32
        Labels 1..N (0 is background) with the spatial axes of ``image``, in ``ZYX`` order.

    Raises
    ------
    ValueError
        For axes that do not name the image's axes, or an option about files (``input``,
        ``out``, ``table``, ``resume``...).
    pydantic.ValidationError
        For an option out of its range.
    InputError
        Where the model is missing or does not fit the image.
    CancelledError
        Where ``progress`` stopped the run.
    """
    given = sorted(_FILE_OPTIONS & options.keys())
    if given:
        msg = f"predict_array takes no {', '.join(given)}: it reads an array and returns labels"
        raise ValueError(msg)
    letters = axes.upper()
    if (
        len(letters) != image.ndim
        or len(set(letters)) != len(letters)
        or set(letters) - set(NGFF_AXES)
    ):
        msg = f"axes {axes!r} must name each of the image's {image.ndim} axes once, from TCZYX"
        raise ValueError(msg)
    order = sorted(range(len(letters)), key=lambda i: NGFF_AXES.index(letters[i]))
    pixels = image.transpose(order)
    # The scratch image is named after the image, so that predict's messages name it.
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    with tempfile.TemporaryDirectory(prefix="embedseg-predict-", dir=scratch) as folder:
        source = Path(folder) / f"{stem}.zarr"
        write_ome_zarr_image(
            source, pixels, axes="".join(letters[i] for i in order), voxel_size=voxel_size
        )
        out = Path(folder) / "labels.zarr"
        config = PredictConfig(input=source, out=out, **options)
        predict(config, progress=progress)
        labels = np.asarray(open_volume(out).array.compute(), dtype=np.uint32)
    logger.debug("predicted %s: %d objects", name, int(labels.max(initial=0)))
    return labels
