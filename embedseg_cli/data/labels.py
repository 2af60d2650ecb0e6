"""What makes an array an instance label image, checked in one place.

Masks given to ``prepare``, predictions and ground truth given to ``evaluate`` and labels
given to ``export labels`` are all checked here: integer values, 0 for background, no
negative labels, nothing above ``2**32 - 1`` (labels are uint32 everywhere), and 2 or 3
spatial axes. Axes of size 1 at either end (a time point, a channel) are dropped down to
the dimensions wanted, never further, so a 1x1 image stays a 2D image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.errors import InputError

__all__ = ["as_labels"]

_UINT32_MAX = int(np.iinfo(np.uint32).max)


def as_labels(data: NDArray[Any], where: str, *, ndim: int | None = None) -> NDArray[np.uint32]:
    """Check that ``data`` holds instance labels and return them as uint32.

    Parameters
    ----------
    data : ndarray
        The label image, possibly with leading axes of size 1.
    where : str
        What the data is, for messages (``"mask masks/a.tif"``).
    ndim : int, optional
        The number of spatial axes required; 2 or 3 where not given.

    Raises
    ------
    InputError
        For float, boolean or negative labels, values that do not fit in uint32, or an
        array of the wrong dimensionality.

    Examples
    --------
    >>> as_labels(np.array([[[0, 2]]], dtype=np.int16), "x").shape
    (1, 2)
    >>> as_labels(np.zeros((1, 1), dtype=np.uint8), "x").shape
    (1, 1)
    >>> as_labels(np.zeros((4, 5, 1), dtype=np.uint8), "x").shape
    (4, 5)
    """
    if not np.issubdtype(data.dtype, np.integer):
        msg = (
            f"{where} has {data.dtype} values: masks must hold integer instance labels "
            "(positive integers for objects, 0 for background); give the label image, not a "
            "probability map or an intensity image"
        )
        raise InputError(msg)
    wanted = (ndim,) if ndim is not None else (2, 3)
    while data.ndim > min(wanted) and 1 in (data.shape[0], data.shape[-1]):
        data = data[0] if data.shape[0] == 1 else data[..., 0]
    if data.ndim not in wanted:
        expected = " or ".join(f"{n}D" for n in wanted)
        msg = f"{where} has shape {data.shape}: labels must be {expected}"
        raise InputError(msg)
    if data.size and np.issubdtype(data.dtype, np.signedinteger) and data.min() < 0:
        msg = f"{where} has negative labels: use 0 for background and positive integers for objects"
        raise InputError(msg)
    if data.size and int(data.max()) > _UINT32_MAX:
        msg = f"{where} has labels above 2**32 - 1: relabel it with consecutive integers"
        raise InputError(msg)
    return data.astype(np.uint32, copy=False)
