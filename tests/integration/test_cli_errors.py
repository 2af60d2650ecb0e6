"""Issue 14: failures the user can fix are one line on stderr, exit 1 (2 for usage), and
keep every input and earlier output byte-identical; ``--json`` also gets an error object."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
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
    done = subprocess.run(
        [sys.executable, "-c", "pass"], check=False, preexec_fn=_drop_root_override
    )
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
        check=False,
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
    assert "cannot write out.tif" in line, line
    assert "full" in line, line
    assert not (tmp_path / "out.tif").exists()
    assert not list(tmp_path.glob(".out.tif.incomplete*"))
    assert snapshot(image, model_store) == before

    resumed = run_cli(["predict", str(image), *options, "--out", "out.tif", "--resume"], tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert np.array_equal(
        tifffile.imread(tmp_path / "out.tif"), tifffile.imread(tmp_path / "clean.tif")
    )


# ----------------------------------------------------------------------------------------
# Inputs that gave a traceback (9) or a confusing exit code or message (10, 11c)
# ----------------------------------------------------------------------------------------


def _edited_store(model_store: Path, tmp_path: Path, edit: str) -> Path:
    store = tmp_path / "edited.zarr"
    shutil.copytree(model_store, store)
    meta = json.loads((store / "zarr.json").read_text())
    attrs = meta["attributes"]["embedseg"]
    if edit == "no-properties":
        del attrs["properties"]
    else:
        attrs["schema_version"] = "1"
    (store / "zarr.json").write_text(json.dumps(meta))
    return store


@pytest.mark.parametrize("edit", ["no-properties", "string-version"])
def test_a_store_with_broken_root_attributes_is_one_line(
    edit: str, model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    store = _edited_store(model_store, tmp_path, edit)
    before = snapshot(store, image_2d)

    code, stdout, stderr = invoke(
        "predict", str(image_2d), "--model", str(store), "--out", str(tmp_path / "o.tif"), "--json"
    )

    assert code == 1
    line = one_error_line(stderr)
    assert str(store) in line
    assert "prepare" in line
    if edit == "string-version":
        assert "'1'" in line
        assert "version 1 " not in line.split("reads")[0], "the str must not read as version 1"
    assert json.loads(stdout)["exit_code"] == 1
    assert not (tmp_path / "o.tif").exists()
    assert snapshot(store, image_2d) == before


def test_an_empty_zarr_input_is_one_line(model_store: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.zarr"
    zarr.create_array(empty, shape=(0, 0), dtype="uint16", chunks=(1, 1))
    before = snapshot(empty, model_store)

    code, _, stderr = invoke("predict", str(empty), "--model", str(model_store), "--out", "x.tif")

    assert code == 1
    assert "empty" in one_error_line(stderr)
    assert snapshot(empty, model_store) == before


def test_a_tile_size_not_a_multiple_of_8_is_a_usage_error(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o.tif"
    args = ["--model", str(model_store), "--out", str(out), "--tile-size", "13", "--json"]

    code, stdout, stderr = invoke("predict", str(image_2d), *args)

    assert code == 2
    line = one_error_line(stderr)
    assert "--tile-size" in line
    assert "multiples of 8" in line
    assert json.loads(stdout) == {"error": line.removeprefix("error: "), "exit_code": 2}
    assert not out.exists()


def test_a_tile_size_larger_than_the_input_is_reduced_with_a_warning(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o.tif"
    args = ["--model", str(model_store), "--out", str(out), "--tile-size", "100000"]

    code, _, stderr = invoke("predict", str(image_2d), *args)

    assert code == 0, stderr
    assert (
        "--tile-size 100000x100000 is larger than the input (150x130): reduced to 150x130" in stderr
    )


def test_a_wrong_export_extension_exits_1_as_documented(model_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.zip"

    code, stdout, stderr = invoke(
        "export", "model", str(model_store), "--format", "torchscript", "--out", str(out), "--json"
    )

    assert code == 1
    line = one_error_line(stderr)
    assert ".pt" in line
    assert json.loads(stdout)["exit_code"] == 1
    assert not out.exists()


@pytest.mark.parametrize("kind", ["random.pt", "random.npz", "pickled.pt", "pickled.zip"])
def test_a_file_that_is_no_model_never_suggests_unsafe_loading(
    kind: str, image_2d: Path, tmp_path: Path
) -> None:
    import io
    import zipfile
    from collections import OrderedDict

    import torch
    import yaml

    model = tmp_path / kind
    buffer = io.BytesIO()
    torch.save({"a": OrderedDict(x=np.zeros(3))}, buffer)  # a pickle of more than tensors
    if kind.startswith("random"):
        model.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "pickled.pt":
        model.write_bytes(buffer.getvalue())
    else:
        rdf = {"config": {"embedseg": {}}, "weights": {"pytorch_state_dict": {"source": "w.pt"}}}
        with zipfile.ZipFile(model, "w") as archive:
            archive.writestr("rdf.yaml", yaml.safe_dump(rdf))
            archive.writestr("w.pt", buffer.getvalue())
    before = snapshot(model, image_2d)

    code, _, stderr = invoke("predict", str(image_2d), "--model", str(model), "--out", "o.tif")

    assert code == 1
    line = one_error_line(stderr)
    assert str(model) in line
    for unsafe in ("weights_only", "pickle.load", "allow_pickle", "pickled (object) data"):
        assert unsafe not in line
    assert snapshot(model, image_2d) == before


def test_evaluate_refuses_one_file_folders_of_different_names(tmp_path: Path) -> None:
    labels = np.zeros((16, 16), np.uint16)
    labels[2:6, 2:6] = 1
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    tifffile.imwrite(tmp_path / "pred" / "a.tif", labels)
    tifffile.imwrite(tmp_path / "gt" / "b.tif", labels)
    before = snapshot(tmp_path)

    code, stdout, stderr = invoke(
        "evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json"
    )

    assert code == 1
    line = one_error_line(stderr)
    assert "a.tif" in line
    assert "b.tif" in line
    assert json.loads(stdout)["exit_code"] == 1
    assert snapshot(tmp_path) == before


def test_evaluate_of_1x1_labels_keeps_two_axes(tmp_path: Path) -> None:
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, np.ones((1, 1), np.uint16))

    code, stdout, stderr = invoke("evaluate", str(one), str(one), "--json")

    assert code == 0, stderr
    assert "0 dimensions" not in stderr
    assert len(json.loads(stdout)["images"]) == 1


def test_prepare_refuses_a_set_whose_masks_are_all_empty(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for i in range(3):
        image = np.random.default_rng(i).integers(0, 100, (32, 32)).astype(np.uint16)
        (source / "images").mkdir(parents=True, exist_ok=True)
        (source / "masks").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(source / "images" / f"i{i}.tif", image)
        tifffile.imwrite(source / "masks" / f"i{i}.tif", np.zeros((32, 32), np.uint16))
    before = snapshot(source)

    result = CliRunner().invoke(
        app, ["-q", "prepare", str(source), "--out", str(tmp_path / "p.zarr")]
    )

    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert str(source / "masks") in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert snapshot(source) == before
