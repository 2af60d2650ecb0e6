"""Synthetic microscopy images with known instance labels, for the demo and for tests.

An image holds cells and nuclei of four kinds, at random positions, sizes and orientations:
ellipses (ellipsoids in 3D), crescents (a disk with a bite taken out: non-convex), bent rods
(elongated cells along an arc: non-convex) and lobed blobs (a wavy outline). Some are placed
against others so that they touch, the later one losing the contested pixels. The image is
what a fluorescence microscope would see: each object with its own brightness, a slight
texture and a dimmer rim, on an uneven background, blurred, with shot and read noise.

Everything is a pure function of its arguments and a seed: no disk, no global state. One
implementation serves 2D and 3D (``ndim`` of the shape).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["ObjectKind", "SyntheticImage", "synthesise_dataset", "synthesise_image"]

ObjectKind = Literal["ellipse", "crescent", "rod", "lobed"]
"""The shapes an object can have."""

_KINDS: tuple[ObjectKind, ...] = ("ellipse", "crescent", "rod", "lobed")
_KIND_WEIGHTS = (0.5, 0.15, 0.15, 0.2)
_BACKGROUND = 100.0
"""Camera offset, in grey values."""


@dataclass(frozen=True)
class SyntheticImage:
    """One synthetic image and its instance labels."""

    image: NDArray[np.uint16]
    """The image (Y, X) or volume (Z, Y, X), as a camera would record it."""
    labels: NDArray[np.uint32]
    """Instance labels of the same shape: 0 is background, objects are 1..N."""
    kinds: tuple[ObjectKind, ...]
    """The kind of each object: ``kinds[i]`` is the shape of label ``i + 1``."""


def _rotation(ndim: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """A uniformly random rotation matrix (determinant +1)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return np.asarray(q, dtype=np.float64)


def _local_grid(half: int, ndim: int) -> NDArray[np.float64]:
    """Offsets of a (2 * half + 1)**ndim box from its centre, shape (*box, ndim)."""
    axes = [np.arange(-half, half + 1, dtype=np.float64)] * ndim
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _shape_mask(
    kind: ObjectKind, size: float, ndim: int, rng: np.random.Generator
) -> NDArray[np.bool_]:
    """The pixels of one object of ``kind`` and typical radius ``size``, centred in a box."""
    rotation = _rotation(ndim, rng)
    if kind == "ellipse":
        ratios = rng.uniform(0.55, 1.0, size=ndim)
        ratios[0] = 1.0
        axes = size * rng.uniform(0.9, 1.3) * ratios
        half = math.ceil(axes.max()) + 1
        u = _local_grid(half, ndim) @ rotation
        return np.asarray(((u / axes) ** 2).sum(axis=-1) <= 1.0)
    if kind == "crescent":
        radius = size * rng.uniform(1.0, 1.3)
        bite = radius * rng.uniform(0.7, 0.9)
        # The bite's centre lies far enough out that it never leaves a ring, and close
        # enough that the rest is clearly concave.
        shift = radius * rng.uniform(0.5, 0.7)
        half = math.ceil(radius) + 1
        u = _local_grid(half, ndim) @ rotation
        u_bite = u.copy()
        u_bite[..., 0] -= shift
        return np.asarray(((u**2).sum(axis=-1) <= radius**2) & ((u_bite**2).sum(axis=-1) > bite**2))
    if kind == "rod":
        width = size * rng.uniform(0.45, 0.6)
        length = size * rng.uniform(2.6, 3.6)
        bend = rng.uniform(0.6, 1.4)  # half the angle the arc turns through, in radians
        arc = length / (2 * bend)  # radius of curvature
        # In the rotated frame the arc lies in the plane of the first two axes, its middle at
        # the origin, curving around the centre of curvature at (-arc + sag / 2, 0).
        sag = arc * (1 - math.cos(bend))
        half = math.ceil(length / 2 + width) + 1
        u = _local_grid(half, ndim) @ rotation
        x = u[..., 0] + arc - sag / 2
        y = u[..., 1]
        rho = np.hypot(x, y)
        angle = np.arctan2(y, x)
        off_plane = (u[..., 2:] ** 2).sum(axis=-1)
        along = (rho - arc) ** 2
        ends = np.minimum(
            (x - arc * math.cos(bend)) ** 2 + (y - arc * math.sin(bend)) ** 2,
            (x - arc * math.cos(bend)) ** 2 + (y + arc * math.sin(bend)) ** 2,
        )
        distance = np.where(np.abs(angle) <= bend, along, ends) + off_plane
        return np.asarray(distance <= width**2)
    # Lobed: a radius that waves around the first two axes (a flattened ellipsoid in 3D).
    lobes = int(rng.integers(2, 5))
    depth = rng.uniform(0.15, 0.28)
    phase = rng.uniform(0, 2 * math.pi)
    radius = size * rng.uniform(1.0, 1.25)
    half = math.ceil(radius * (1 + depth)) + 1
    u = _local_grid(half, ndim) @ rotation
    rho = np.hypot(u[..., 0], u[..., 1])
    outline = radius * (1 + depth * np.sin(lobes * np.arctan2(u[..., 1], u[..., 0]) + phase))
    rest = (u[..., 2:] ** 2).sum(axis=-1) / (0.8 * radius) ** 2
    return np.asarray((rho / outline) ** 2 + rest <= 1.0)


def _place(
    labels: NDArray[np.uint32],
    mask: NDArray[np.bool_],
    centre: Sequence[int],
    label: int,
    *,
    max_overlap: float,
    min_size: int,
) -> bool:
    """Paint ``mask`` centred at ``centre`` where ``labels`` is free; whether it was placed.

    The object is refused where it would lose more than ``max_overlap`` of its pixels to
    earlier objects, where less than 70% of it lies inside the image, where what is left
    is smaller than ``min_size`` or falls apart into pieces.
    """
    half = [s // 2 for s in mask.shape]
    window = []
    inner = []
    for c, h, n, s in zip(centre, half, labels.shape, mask.shape, strict=True):
        lo, hi = c - h, c - h + s
        window.append(slice(max(lo, 0), min(hi, n)))
        inner.append(slice(max(lo, 0) - lo, s - (hi - min(hi, n))))
    part = mask[tuple(inner)]
    total = int(mask.sum())
    inside = int(part.sum())
    if inside < 0.7 * total:
        return False
    region = labels[tuple(window)]
    free = part & (region == 0)
    kept = int(free.sum())
    if kept < max(min_size, (1 - max_overlap) * inside):
        return False
    if ndimage.label(free)[1] != 1:
        return False
    region[free] = label
    return True


def _boundary_pixel(labels: NDArray[np.uint32], rng: np.random.Generator) -> NDArray[np.int64]:
    """A random pixel on the outer edge of the objects so far."""
    foreground = labels > 0
    edge = foreground & ~ndimage.binary_erosion(foreground)
    points = np.argwhere(edge)
    return np.asarray(points[rng.integers(len(points))], dtype=np.int64)


def _render(
    labels: NDArray[np.uint32], rng: np.random.Generator, *, photons: float, blur: float
) -> NDArray[np.uint16]:
    """What a fluorescence microscope would record of the objects in ``labels``."""
    shape = labels.shape
    ndim = labels.ndim
    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, size=n)])
    # A dimmer rim: the distance of each pixel to the nearest object edge (its own, or the
    # line between two touching objects) darkens the outermost pixels.
    edges = np.zeros(shape, dtype=bool)
    for axis in range(ndim):
        step = np.diff(labels, axis=axis) != 0
        lower = [slice(None)] * ndim
        upper = [slice(None)] * ndim
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        edges[tuple(lower)] |= step
        edges[tuple(upper)] |= step
    depth = np.asarray(ndimage.distance_transform_edt(~edges), dtype=np.float64)
    rim = 0.55 + 0.45 * (1 - np.exp(-depth / 1.5))
    grain = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    texture = 1 + 0.12 * grain / max(float(grain.std()), 1e-12)
    signal = brightness[labels] * rim * np.clip(texture, 0.5, 1.5) * (labels > 0)
    # An uneven background: a tilted plane and a few broad glows.
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    tilt = rng.uniform(-0.08, 0.08, size=ndim)
    background = 0.12 + np.tensordot(tilt, grid, axes=1)
    broad = ndimage.gaussian_filter(rng.normal(size=shape), max(shape) / 6)
    background += 0.08 * broad / max(float(np.abs(broad).max()), 1e-12)
    light = ndimage.gaussian_filter(signal + np.clip(background, 0.0, None), blur)
    counts = rng.poisson(light * photons).astype(np.float64)
    counts += rng.normal(_BACKGROUND, 3.0, size=shape)
    return np.asarray(np.clip(np.round(counts), 0, 65535), dtype=np.uint16)


def synthesise_image(
    shape: Sequence[int],
    *,
    seed: int | Sequence[int] = 0,
    size: tuple[float, float] = (5.0, 9.0),
    coverage: float = 0.3,
    touching: float = 0.4,
    photons: float = 300.0,
    blur: float = 1.0,
) -> SyntheticImage:
    """One synthetic image (2D or 3D) of touching, non-convex cells and its labels.

    Parameters
    ----------
    shape : sequence of int
        ``(Y, X)`` for an image, ``(Z, Y, X)`` for a volume.
    seed : int or sequence of int
        Seed of everything random: the same seed gives the same image.
    size : (float, float)
        Range of the objects' typical radius, in pixels.
    coverage : float
        Fraction of the image the objects should cover (fewer where they do not fit).
    touching : float
        Probability that an object is placed against an earlier one.
    photons : float
        Photons of the brightest object pixel: fewer give noisier images.
    blur : float
        Standard deviation of the optical blur, in pixels.

    Returns
    -------
    SyntheticImage
        The uint16 image, the uint32 labels (consecutive from 1) and each object's kind.

    Examples
    --------
    >>> sample = synthesise_image((64, 64), seed=1)
    >>> sample.image.shape, sample.image.dtype.name, sample.labels.dtype.name
    ((64, 64), 'uint16', 'uint32')
    >>> int(sample.labels.max()) == len(sample.kinds) > 3
    True
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        msg = f"shape must be (Y, X) or (Z, Y, X), got {shape}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint32)
    kinds: list[ObjectKind] = []
    target = coverage * math.prod(shape)
    min_size = max(8, round(0.3 * size[0] ** ndim))
    covered = 0
    for _ in range(40 * max(1, round(target / (size[0] ** ndim)))):
        if covered >= target:
            break
        kind = _KINDS[rng.choice(len(_KINDS), p=_KIND_WEIGHTS)]
        mask = _shape_mask(kind, rng.uniform(*size), ndim, rng)
        if kinds and rng.random() < touching:
            # Against an earlier object: its centre about one radius out from an edge.
            direction = rng.normal(size=ndim)
            direction /= np.linalg.norm(direction)
            reach = 0.5 * (mask.sum() ** (1 / ndim))
            centre = np.round(_boundary_pixel(labels, rng) + direction * reach).astype(int)
            max_overlap = 0.2
        else:
            centre = np.asarray([rng.integers(0, s) for s in shape])
            max_overlap = 0.05
        if _place(
            labels,
            mask,
            centre.tolist(),
            len(kinds) + 1,
            max_overlap=max_overlap,
            min_size=min_size,
        ):
            kinds.append(kind)
            covered = int(np.count_nonzero(labels))
    image = _render(labels, rng, photons=photons, blur=blur)
    return SyntheticImage(image, labels, tuple(kinds))


def synthesise_dataset(
    n_images: int,
    shape: Sequence[int],
    *,
    seed: int = 0,
    size: tuple[float, float] = (5.0, 9.0),
    coverage: float = 0.3,
    touching: float = 0.4,
) -> list[SyntheticImage]:
    """``n_images`` synthetic images of one shape, each from its own seed.

    Image ``i`` depends only on ``seed`` and ``i``, so a larger data set starts with the
    images of a smaller one.

    Examples
    --------
    >>> first = synthesise_dataset(2, (32, 32), seed=3)
    >>> again = synthesise_dataset(1, (32, 32), seed=3)
    >>> bool(np.array_equal(first[0].image, again[0].image))
    True
    """
    return [
        synthesise_image(shape, seed=(seed, i), size=size, coverage=coverage, touching=touching)
        for i in range(n_images)
    ]
