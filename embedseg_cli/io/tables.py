"""CSV tables: the one writer of every table embedseg writes.

``predict --table`` and ``export labels --format csv`` write per-object tables,
``evaluate --csv`` one row per image and threshold; all are written here, all or nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.io.atomic import cannot_write, staged

__all__ = ["write_csv", "write_table_csv"]


def write_csv(
    path: Path,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    decimals: int | None = None,
) -> None:
    """Write ``rows`` as a CSV file with a header of ``columns``, all or nothing.

    Parameters
    ----------
    path : Path
        The file; its folder is created where missing.
    rows : iterable of mappings
        One mapping per row, by column name. A column a row lacks is left empty, a key
        that is not one of ``columns`` is left out.
    columns : sequence of str
        The header, in order.
    decimals : int, optional
        Round floating-point values to this many decimals; written in full by default.

    Raises
    ------
    InputError
        Where the file cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.csv"
    >>> write_csv(path, [{"a": 1, "b": 0.12345}, {"a": 2}], ["a", "b"], decimals=3)
    >>> path.read_text().splitlines()
    ['a,b', '1,0.123', '2,']
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged(path) as staging, staging.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(row if decimals is None else _rounded(row, decimals))
    except OSError as exc:
        raise cannot_write(path, exc) from None


def _rounded(row: Mapping[str, Any], decimals: int) -> dict[str, Any]:
    return {
        key: round(value, decimals) if isinstance(value, float) else value
        for key, value in row.items()
    }


def write_table_csv(
    path: Path, columns: Mapping[str, NDArray[Any]], *, decimals: int | None = 3
) -> None:
    """Write equal-length columns as a CSV file with a header, all or nothing.

    Floating-point values are rounded to ``decimals`` (3 by default: a per-object table's
    centroids and intensities need no more).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.csv"
    >>> write_table_csv(path, {"label": np.array([1, 2]), "y": np.array([0.5, 1 / 3])})
    >>> path.read_text().splitlines()
    ['label,y', '1,0.5', '2,0.333']
    """
    names = list(columns)
    values = zip(*(np.asarray(column).tolist() for column in columns.values()), strict=True)
    rows = (dict(zip(names, row, strict=True)) for row in values)
    write_csv(path, rows, names, decimals=decimals)
