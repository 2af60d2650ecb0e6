"""predict never replaces an input, owns its output while it runs, and loses no finished work."""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.io.guards import lock_output
from embedseg_cli.predict import workflow as predict_module
from tests.conftest import disks

runner = CliRunner()

OPTIONS = [
    "--no-tta",
    "--device",
    "cpu",
    "--seed-threshold",
    "0.5",
    "--foreground-threshold",
    "0.45",
    "--min-object-size",
    "0",
]


def _image(path: Path, seed: int) -> Path:
    image, _ = disks((40, 40), 3, np.random.default_rng(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image)
    return path


def _hashes(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (what must stay byte-identical)."""
    found: dict[str, str] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def _predict(model: Path, *args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["-q", "predict", *map(str, args), "--model", str(model), *OPTIONS])
    return result.exit_code, result.stdout, result.stderr


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda d: [d / "in.tif", "--out", d / "in.tif", "--overwrite"], "is the input INPUT"),
        (lambda d: [d / "in.tif", "--out", d / "in.tif", "--resume"], "is the input INPUT"),
        (lambda d: [d / "in.tif", "--out", d / "in.tif"], "is the input INPUT"),
        (lambda d: [d / "imgs", "--out", d / "imgs", "--overwrite"], "is the input INPUT"),
        (lambda d: [d / "imgs", "--out", d, "--overwrite"], "contains the input INPUT"),
        (lambda d: [d / "imgs", "--out", d / "imgs" / "labels"], "is inside the input INPUT"),
        (lambda d: [d / "link.tif", "--out", d / "in.tif", "--overwrite"], "is the input INPUT"),
        (
            lambda d: [d / "in.tif", "--out", d / "o.tif", "--table", d / "in.tif"],
            "--table",
        ),
        (lambda d: ["in.tif", "--out", d / "in.tif", "--overwrite"], "is the input INPUT"),
    ],
    ids=[
        "file-overwrite",
        "file-resume",
        "file-no-flag",
        "folder-overwrite",
        "parent-folder",
        "inside-folder",
        "symlink",
        "table",
        "relative",
    ],
)
def test_an_output_that_is_holds_or_lies_inside_an_input_is_refused(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_args, expected: str
) -> None:
    _image(tmp_path / "in.tif", 1)
    _image(tmp_path / "imgs" / "a.tif", 2)
    (tmp_path / "link.tif").symlink_to(tmp_path / "in.tif")
    monkeypatch.chdir(tmp_path)
    before = _hashes(tmp_path)
    code, _, stderr = _predict(model_store, *make_args(tmp_path))
    assert code == 1, stderr
    assert expected in _one_line(stderr)
    assert _hashes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "in.tif", "link.tif"]


def test_an_output_inside_the_model_store_is_refused(model_store: Path, tmp_path: Path) -> None:
    image = _image(tmp_path / "in.tif", 1)
    before = _hashes(model_store, image)
    code, _, stderr = _predict(model_store, image, "--out", model_store / "x.zarr")
    assert code == 1
    assert "is inside the input --model" in _one_line(stderr)
    code, _, stderr = _predict(model_store, image, "--out", model_store, "--overwrite")
    assert code == 1
    assert "is the input --model" in _one_line(stderr)
    assert _hashes(model_store, image) == before


def test_a_second_run_into_a_locked_output_refuses_naming_the_first(
    model_store: Path, tmp_path: Path
) -> None:
    image = _image(tmp_path / "in.tif", 1)
    out = tmp_path / "out.tif"
    lock = tmp_path / ".out.tif.embedseg-work.lock"
    # Another process holds the lock: flock locks of two open files conflict even within
    # one process, which is what a second run would meet.
    with lock_output(lock, out):
        code, _, stderr = _predict(model_store, image, "--out", out, "--overwrite")
    assert code == 1
    line = _one_line(stderr)
    assert f"{out} is being written by another run (pid {os.getpid()} on " in line
    assert not out.exists()
    assert not (tmp_path / ".out.tif.embedseg-work").exists()
    # Released (also when a process dies): the next run goes ahead.
    code, _, stderr = _predict(model_store, image, "--out", out)
    assert code == 0, stderr
    assert not lock.exists()


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_resume_with_nothing_to_resume(model_store: Path, tmp_path: Path, suffix: str) -> None:
    a = _image(tmp_path / "a.tif", 1)
    b = _image(tmp_path / "b.tif", 2)
    out = tmp_path / f"out{suffix}"
    assert _predict(model_store, a, "--out", out)[0] == 0
    before = _hashes(out)
    # The same input and settings: already complete, nothing written.
    code, _stdout, stderr = _predict(model_store, a, "--out", out, "--resume")
    assert code == 0, stderr
    assert _hashes(out) == before
    # Another input: refused, the finished output kept.
    code, _, stderr = _predict(model_store, b, "--out", out, "--resume")
    assert code == 1
    line = _one_line(stderr)
    assert "was made with other settings (input, normalisation)" in line
    assert "--overwrite" in line
    assert _hashes(out) == before


def test_resume_onto_a_tiff_that_records_nothing_is_refused(
    model_store: Path, tmp_path: Path
) -> None:
    image = _image(tmp_path / "a.tif", 1)
    out = tmp_path / "labels.tif"
    tifffile.imwrite(out, np.ones((40, 40), np.uint32))
    before = _hashes(out, image)
    code, _, stderr = _predict(model_store, image, "--out", out, "--resume")
    assert code == 1
    assert "there is no interrupted run to resume" in _one_line(stderr)
    assert _hashes(out, image) == before


@pytest.fixture
def interrupted(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A run killed after its last block and before its write (its work folder left)."""
    image = _image(tmp_path / "a.tif", 1)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(predict_module, "_keep_or_drop_outputs", lambda *_: None)
        # Typed as a relative path; resumed below as an absolute one.
        code, _, stderr = _predict(model_store, "a.tif", "--out", "out.tif", "--block-size", "16")
    assert code == 0, stderr
    reference = tmp_path / "reference.tif"
    (tmp_path / "out.tif").rename(reference)
    assert (tmp_path / ".out.tif.embedseg-work" / "state.json").is_file()
    return image, reference


def test_resume_accepts_the_same_input_typed_as_an_absolute_path(
    model_store: Path, tmp_path: Path, interrupted: tuple[Path, Path]
) -> None:
    image, reference = interrupted
    out = tmp_path / "out.tif"
    code, _, stderr = _predict(model_store, image.absolute(), "--out", out, "--block-size", "16")
    assert code == 1
    assert (
        f"{out} has an interrupted run (9 of 9 blocks done): pass --resume to continue it or "
        "--overwrite to start over"
    ) in _one_line(stderr)
    assert not out.exists()
    code, _, stderr = _predict(
        model_store, image.absolute(), "--out", out, "--block-size", "16", "--resume"
    )
    assert code == 0, stderr
    assert np.array_equal(tifffile.imread(out), tifffile.imread(reference))
    assert not (tmp_path / ".out.tif.embedseg-work").exists()


def test_overwrite_starts_an_interrupted_run_over_and_says_so(
    model_store: Path, tmp_path: Path, interrupted: tuple[Path, Path]
) -> None:
    image, reference = interrupted
    out = tmp_path / "out.tif"
    result = runner.invoke(
        app,
        [
            "predict",
            str(image),
            "--out",
            str(out),
            "--model",
            str(model_store),
            *OPTIONS,
            "--block-size",
            "16",
            "--overwrite",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "starting over (--overwrite)" in result.stderr
    assert "9 of 9 blocks done" in result.stderr
    assert np.array_equal(tifffile.imread(out), tifffile.imread(reference))


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "embedseg_cli", "-q", "predict", *map(str, args), *OPTIONS]


def _concurrent_predicts(model_store: Path, tmp_path: Path, repeats: int) -> None:
    images = [_image(tmp_path / f"img{i}.tif", 10 + i) for i in range(3)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    references = []
    for i, image in enumerate(images):
        out, table = tmp_path / f"ref{i}.tif", tmp_path / f"ref{i}.csv"
        code, _, stderr = _predict(model_store, image, "--out", out, "--table", table)
        assert code == 0, stderr
        references.append((tifffile.imread(out), table.read_text()))
    assert len({r[1] for r in references}) == 3, "the images must give different results"
    out = tmp_path / "shared.tif"
    for repeat in range(repeats):
        tables = [tmp_path / f"run{repeat}-{i}.csv" for i in range(3)]
        runs = [
            subprocess.Popen(
                _cli(image, "--model", model_store, "--out", out, "--overwrite", "--table", t),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for image, t in zip(images, tables, strict=True)
        ]
        finished = [run.communicate(timeout=300) for run in runs]
        winners = []
        for i, (run, (stdout, stderr)) in enumerate(zip(runs, finished, strict=True)):
            assert "Traceback" not in stderr, stderr
            if run.returncode == 1:
                assert len(stderr.strip().splitlines()) == 1, stderr
                assert "is being written by another run (pid" in stderr
                continue
            assert run.returncode == 0, stderr
            winners.append(i)
            labels, table = references[i]
            objects = int(labels.max())
            assert stdout.startswith(f"1 image(s), {objects} objects"), stdout
            assert tables[i].read_text() == table
            assert len(list(csv.reader(table.splitlines()))) == objects + 1
        assert winners, "one run at least gets the output"
        final = tifffile.imread(out)
        assert any(np.array_equal(final, references[i][0]) for i in winners)
        assert not list(tmp_path.glob(".shared.tif*")), list(tmp_path.glob(".shared.tif*"))


def test_concurrent_predicts_into_one_output_never_mix(model_store: Path, tmp_path: Path) -> None:
    _concurrent_predicts(model_store, tmp_path, repeats=2)


@pytest.mark.slow
def test_concurrent_predicts_into_one_output_never_mix_repeated(
    model_store: Path, tmp_path: Path
) -> None:
    _concurrent_predicts(model_store, tmp_path, repeats=10)
