"""Issue 14: failures the user can fix are one line on stderr, exit 1 (2 for usage), and
keep every input and earlier output byte-identical; ``--json`` also gets an error object."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from embedseg_cli.cli import app
from tests.conftest import disks

ROOT = Path(__file__).resolve().parents[2]


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths``, by path: equal before and after a failure."""
    found: dict[str, str] = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["-q", *args])
    return result.exit_code, result.stdout, result.stderr


# ----------------------------------------------------------------------------------------
# Read-only folders and full disks (7): in a subprocess, as a user would see them
# ----------------------------------------------------------------------------------------


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _drop_root_override() -> None:
    """In the child: lose root's right to write anywhere, so that chmod 0o555 binds."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")


def _can_drop_root_override() -> bool:
    done = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_root_override)
    return done.returncode == 0


def run_cli(
    args: list[str], cwd: Path, *, read_only_binds: bool = False, file_limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    def before() -> None:
        if read_only_binds:
            _drop_root_override()
        if file_limit is not None:
            # A write past the limit fails with EFBIG (or is cut short), as on a full disk.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "embedseg_cli", "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=before,
        timeout=300,
    )


@pytest.fixture
def read_only(tmp_path: Path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0 and not _can_drop_root_override():
        pytest.skip("running as root without CAP_SETPCAP: chmod cannot make a folder read-only")
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize(
    "command",
    [
        ["prepare", "{src}", "--out", "ro/p.zarr"],
        ["predict", "{image}", "--model", "{store}", "--out", "ro/labels.tif"],
        ["predict", "{image}", "--model", "{store}", "--out", "ro/labels.zarr", "--json"],
        ["export", "model", "{store}", "--format", "torchscript", "--out", "ro/m.pt"],
    ],
    ids=["prepare", "predict-tif", "predict-zarr", "export-torchscript"],
)
def test_a_read_only_output_folder_is_one_line_and_exit_1(
    command: list[str], read_only: Path, model_store: Path, tmp_path: Path
) -> None:
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, disks((48, 48), 4, np.random.default_rng(1))[0])
    src = model_store.parent / "src"
    args = [a.format(src=src, image=image, store=model_store) for a in command]
    before = snapshot(image, model_store, src)

    done = run_cli(args, tmp_path, read_only_binds=os.geteuid() == 0)

    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    out = args[args.index("--out") + 1]
    assert f"cannot write {out}" in line or f"cannot write {tmp_path / out}" in line, line
    assert "--out" in line or "writable" in line
    assert list(read_only.iterdir()) == []
    assert snapshot(image, model_store, src) == before
    if "--json" in args:
        assert json.loads(done.stdout) == {"error": line.removeprefix("error: "), "exit_code": 1}


def test_a_full_disk_during_predict_is_one_line_and_resume_finishes_it(
    model_store: Path, tmp_path: Path
) -> None:
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, disks((200, 200), 20, np.random.default_rng(2))[0])
    options = ["--model", str(model_store), "--tile-size", "64", "--block-size", "64"]
    clean = run_cli(["predict", str(image), *options, "--out", "clean.tif"], tmp_path)
    assert clean.returncode == 0, clean.stderr
    before = snapshot(image, model_store)

    full = run_cli(
        ["predict", str(image), *options, "--out", "out.tif"], tmp_path, file_limit=16_000
    )

    assert full.returncode == 1, full.stderr
    line = one_error_line(full.stderr)
    assert "cannot write out.tif" in line and "full" in line, line
    assert not (tmp_path / "out.tif").exists()
    assert not list(tmp_path.glob(".out.tif.incomplete*"))
    assert snapshot(image, model_store) == before

    resumed = run_cli(["predict", str(image), *options, "--out", "out.tif", "--resume"], tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert np.array_equal(
        tifffile.imread(tmp_path / "out.tif"), tifffile.imread(tmp_path / "clean.tif")
    )
