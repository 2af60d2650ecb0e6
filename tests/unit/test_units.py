"""Unit names of OME-XML, ImageJ, OME-Zarr and TIFF, in micrometres."""

import pytest

from embedseg_cli.io.units import micrometres_per


@pytest.mark.parametrize(
    ("unit", "micrometres"),
    [
        ("\u00b5m", 1.0),  # OME-XML, micro sign
        ("\u03bcm", 1.0),  # Greek mu
        ("um", 1.0),
        ("micron", 1.0),  # ImageJ
        ("microns", 1.0),
        ("\\u00B5m", 1.0),  # ImageJ's escaped micro sign
        ("micrometer", 1.0),  # OME-Zarr
        ("Micrometre", 1.0),
        ("nm", 1e-3),
        ("nanometer", 1e-3),
        ("mm", 1e3),
        ("millimeter", 1e3),
        ("cm", 1e4),
        ("m", 1e6),
        ("meter", 1e6),
        ("\u00c5", 1e-4),  # OME-XML's angstrom
        ("\u212b", 1e-4),  # the angstrom sign
        ("angstrom", 1e-4),
        ("inch", 25400.0),
        ("in", 25400.0),
        (" nm ", 1e-3),
    ],
)
def test_length_units_in_micrometres(unit: str, micrometres: float) -> None:
    assert micrometres_per(unit) == pytest.approx(micrometres)


@pytest.mark.parametrize(
    "unit", [None, "", "pixel", "pixels", "px", "reference frame", "furlong", "s", "second"]
)
def test_no_unit_a_pixel_or_an_unknown_name_is_unknown(unit: str | None) -> None:
    assert micrometres_per(unit) is None
