"""Lengths in the units image metadata names, converted to micrometres.

Every voxel size embedseg reads, compares and writes is in micrometres, per spatial axis,
or unknown. Metadata names its units in several vocabularies: OME-XML (``µm``, ``nm``,
``Å``, ...), ImageJ (``micron``, ``um``, ``nm``, ``inch``, ...), OME-Zarr (``micrometer``,
``nanometer``, ...) and the TIFF ResolutionUnit tag (inch, centimetre); all are read by
:func:`micrometres_per`. A size whose unit is missing, a pixel, or a name not known here is
unknown: it is never taken to be in micrometres.
"""

from __future__ import annotations

__all__ = [
    "IMAGEJ_MICROMETRE",
    "NGFF_MICROMETRE",
    "OME_MICROMETRE",
    "VoxelSize",
    "micrometres_per",
]

VoxelSize = tuple[float | None, ...]
"""A voxel size in micrometres per spatial axis (ZYX order), None along an unknown axis."""

NGFF_MICROMETRE = "micrometer"
"""The micrometre as OME-Zarr (NGFF) names it in an axis's ``unit``."""
OME_MICROMETRE = "\u00b5m"
"""The micrometre as OME-XML names it in ``PhysicalSizeXUnit`` and its siblings."""
IMAGEJ_MICROMETRE = "micron"
"""The micrometre as ImageJ writes it in a TIFF's ``unit=``."""

_SI_PREFIXES = {
    "": ("", 1e6),
    "kilo": ("k", 1e9),
    "hecto": ("h", 1e8),
    "deca": ("da", 1e7),
    "deci": ("d", 1e5),
    "centi": ("c", 1e4),
    "milli": ("m", 1e3),
    "micro": ("u", 1.0),
    "nano": ("n", 1e-3),
    "pico": ("p", 1e-6),
    "femto": ("f", 1e-9),
}

_LENGTHS: dict[str, float] = {
    **{f"{prefix}meter": value for prefix, (_, value) in _SI_PREFIXES.items()},
    **{f"{symbol}m": value for symbol, value in _SI_PREFIXES.values()},
    "micron": 1.0,
    "angstrom": 1e-4,
    "\u00e5": 1e-4,  # Å, lower-cased (from U+00C5 or the angstrom sign U+212B)
    "inch": 25400.0,
    "inches": 25400.0,
    "in": 25400.0,
}


def micrometres_per(unit: str | None) -> float | None:
    """How many micrometres one ``unit`` is; None where that cannot be known.

    Names are matched without regard to case, with ``µ`` (micro sign or Greek mu) or
    ``u`` for micro, British or American spelling and a plural ``s``. None is returned
    for no unit, an empty one, a pixel, or a name that is not a length known here.

    Examples
    --------
    >>> micrometres_per("nm")
    0.001
    >>> micrometres_per("micron"), micrometres_per("um"), micrometres_per("micrometer")
    (1.0, 1.0, 1.0)
    >>> micrometres_per("Centimetres")
    10000.0
    >>> micrometres_per("inch")
    25400.0
    >>> micrometres_per("pixel") is None, micrometres_per(None) is None
    (True, True)
    """
    if unit is None:
        return None
    name = unit.strip().lower()
    # ImageJ may keep a micro sign as the escape sequence it wrote into an ASCII header.
    for micro in ("\\u00b5", "\u00b5", "\u03bc"):
        name = name.replace(micro, "u")
    name = name.replace("metre", "meter")
    if name in _LENGTHS:
        return _LENGTHS[name]
    if name.endswith("s") and name[:-1] in _LENGTHS:
        return _LENGTHS[name[:-1]]
    return None
