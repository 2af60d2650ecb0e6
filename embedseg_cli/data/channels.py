"""Images with their channel axis first, as the network takes them, checked in one place.

Works on NumPy and dask arrays alike (through NumPy's array protocol), so ``predict`` can
rearrange a volume larger than memory without reading it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from embedseg_cli.errors import InputError

__all__ = ["channels_first"]

A = TypeVar("A")


def channels_first(array: A, axes: str, *, ndim: int, channels: int, where: str, fix: str) -> A:
    """``array`` (axes named by ``axes``) as ``(C, *spatial)`` for a model of ``ndim`` and ``channels``.

    Axes of size 1 that are neither spatial (``ZYX``) nor the channel axis (a time point)
    are dropped; a missing channel axis is added.

    Parameters
    ----------
    array : ndarray or dask array
        The image.
    axes : str
        Its axes, one letter each (``"YX"``, ``"CZYX"``, ``"TYXC"``).
    ndim, channels : int
        What the model takes.
    where : str
        What the image is, for messages.
    fix : str
        What the user should do where the image does not fit the model.

    Raises
    ------
    InputError
        For an image of booleans or non-numeric values, or one that does not fit the model.

    Examples
    --------
    >>> channels_first(np.zeros((4, 5, 2)), "YXC", ndim=2, channels=2, where="x", fix="").shape
    (2, 4, 5)
    >>> channels_first(np.zeros((1, 4, 5)), "TYX", ndim=2, channels=1, where="x", fix="").shape
    (1, 4, 5)
    """
    data: Any = array
    axes = axes.upper()
    shape = tuple(int(n) for n in data.shape)
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_ or dtype.kind not in "uif":
        msg = (
            f"{where} holds {dtype} values: give an image of integer or floating-point intensities"
        )
        raise InputError(msg)
    if "C" in axes:
        data = np.moveaxis(data, axes.index("C"), 0)
        rest = axes.replace("C", "")
    else:
        data = data[None]
        rest = axes
    for index in reversed(range(len(rest))):
        if rest[index] not in "ZYX" and data.shape[index + 1] == 1:
            data = data[(slice(None),) * (index + 1) + (0,)]
            rest = rest[:index] + rest[index + 1 :]
    if len(rest) != ndim or set(rest) - set("ZYX") or data.shape[0] != channels:
        msg = (
            f"{where} has axes {axes} and shape {shape} but the model takes {ndim}D images "
            f"with {channels} channel(s): {fix}"
        )
        raise InputError(msg)
    result: A = data
    return result
