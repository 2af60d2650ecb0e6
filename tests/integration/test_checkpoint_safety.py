"""Checkpoints that cannot be trusted are refused; training never saves what it cannot trust.

Issue 14 ("never lose a user's data"): a damaged or missing checkpoint chunk, NaN weights,
an infinite learning rate, Ctrl-C or SIGTERM, and a full disk while saving.
"""

import errno
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
import torch
import zarr
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.config import PrepareConfig, TrainConfig
from embedseg_cli.errors import CheckpointError
from embedseg_cli.io.models import TrainedModel, read_model, write_compact
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.prepare import prepare
from embedseg_cli.train import train
from tests.conftest import disks, write_pair

TENSOR = "model.encoder.layers.0.conv.weight"
"""A network tensor every checkpoint has (its chunk is a few hundred bytes)."""


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _one_line_error(result: object, code: int, *needles: str) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.exit_code == code, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _chunk(store: Path, run: str, tag: str, tensor: str) -> Path:
    chunks = [
        p for p in (store / "checkpoints" / run / tag / tensor).iterdir() if p.name != "zarr.json"
    ]
    assert len(chunks) == 1
    return chunks[0]


@pytest.fixture
def trained(model_store: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny trained store (run ``m``), free to damage."""
    copy = tmp_path / "p.zarr"
    shutil.copytree(model_store, copy)
    return copy


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, disks((32, 32), 2, np.random.default_rng(1))[0])
    return path


def _predict(store: Path, image: Path, out: Path, *args: str) -> object:
    return CliRunner().invoke(
        app,
        [
            "-q",
            "predict",
            str(image),
            "--model",
            str(store),
            "--out",
            str(out),
            "--no-tta",
            "--device",
            "cpu",
            *args,
        ],
    )


def _resume(store: Path, *args: str) -> object:
    return CliRunner().invoke(
        app,
        [
            "-q",
            "train",
            str(store),
            "--run",
            "m",
            "--resume",
            "--epochs",
            "2",
            "--device",
            "cpu",
            *args,
        ],
    )


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_a_damaged_checkpoint_chunk_is_one_line_and_exit_1(
    trained: Path, image: Path, tmp_path: Path, damage: str
) -> None:
    """Finding 4: a corrupt chunk gave a zstd RuntimeError traceback."""
    for tag in ("best", "last"):
        chunk = _chunk(trained, "m", tag, TENSOR)
        data = bytearray(chunk.read_bytes())
        if damage == "garbage":
            data = bytearray(b"not zstd at all")
        elif damage == "truncated":
            data = data[: len(data) // 2]
        else:
            data[-5] ^= 0xFF  # may still decode: the checksum catches it
        chunk.write_bytes(bytes(data))
    before = _files(trained)
    line = _one_line_error(_predict(trained, image, tmp_path / "o.tif"), 1, "m/best", TENSOR)
    assert "another run" in line or "train again" in line
    assert not (tmp_path / "o.tif").exists()
    _one_line_error(_resume(trained), 1, "m/last", TENSOR)
    assert _files(trained) == before


def test_a_missing_checkpoint_chunk_is_an_error_not_zeros(
    trained: Path, image: Path, tmp_path: Path
) -> None:
    """Finding 5: a missing chunk read as zeros and predict exited 0 with another network."""
    _chunk(trained, "m", "best", TENSOR).unlink()
    before = _files(trained)
    _one_line_error(_predict(trained, image, tmp_path / "o.tif"), 1, "m/best", TENSOR, "lost chunk")
    assert _files(trained) == before
    # The other checkpoint is intact and still used.
    result = _predict(trained, image, tmp_path / "o.tif", "--checkpoint", "last")
    assert result.exit_code == 0, result.stderr


def test_a_zero_tensor_keeps_its_chunk_so_a_missing_one_is_seen(trained: Path) -> None:
    store = ProjectStore.open(trained)
    tensors, attrs = store.read_checkpoint("m", "best")
    zeros = next(k for k, v in tensors.items() if v.size > 1 and not v.any())
    store.write_checkpoint("m", "best", tensors, attrs)
    _chunk(trained, "m", "best", zeros).unlink()
    with pytest.raises(CheckpointError, match="lost chunk"):
        ProjectStore.open(trained).read_checkpoint("m", "best")


def test_checkpoints_without_checksums_are_still_read_and_checked(trained: Path) -> None:
    """Checkpoints written before checksums: read, and NaN still refused."""
    meta = trained / "checkpoints" / "m" / "best" / "zarr.json"
    document = json.loads(meta.read_text())
    del document["attributes"]["embedseg"]["tensors"]
    meta.write_text(json.dumps(document))
    tensors, _ = ProjectStore.open(trained).read_checkpoint("m", "best")
    assert TENSOR in tensors
    array = zarr.open_array(trained / "checkpoints" / "m" / "best" / TENSOR, mode="r+")
    array[0] = np.nan
    with pytest.raises(CheckpointError, match="NaN"):
        ProjectStore.open(trained).read_checkpoint("m", "best")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e39"])
def test_an_infinite_learning_rate_is_a_usage_error(trained: Path, value: str) -> None:
    """Finding 6: --lr inf was accepted and saved NaN weights (1e39 overflowed in Adam)."""
    before = _files(trained)
    result = CliRunner().invoke(app, ["-q", "train", str(trained), "--run", "x", f"--lr={value}"])
    _one_line_error(result, 2, "--lr")
    assert _files(trained) == before


def test_weights_that_become_nan_stop_training_and_keep_the_last_good_checkpoint(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 6: NaN weights were saved as best and last; now nothing of the epoch is."""
    step = torch.optim.Adam.step

    def poisoned(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        result = step(self, *args, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    before = _files(trained)
    line = _one_line_error(_resume(trained, "--steps-per-epoch", "1"), 1, "NaN or infinite")
    assert "epoch 2" in line
    assert "--resume" in line
    assert _files(trained) == before


def test_a_model_with_nan_weights_is_refused_naming_it(
    trained: Path, image: Path, tmp_path: Path
) -> None:
    """Finding 6: predict with NaN weights exited 0 with 0 objects."""
    model = read_model(trained)
    name = TENSOR.removeprefix("model.")
    compact = write_compact(TrainedModel(model.tensors, model.attrs, "m"), tmp_path / "m.npz")
    with np.load(compact) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays[name] = np.full_like(arrays[name], np.nan)
    np.savez(tmp_path / "nan.npz", **arrays)
    _one_line_error(_predict(tmp_path / "nan.npz", image, tmp_path / "o.tif"), 1, "nan.npz", "NaN")
    # A store checkpoint written with NaN (by an earlier embedseg) is refused by the store.
    store = ProjectStore.open(trained)
    tensors, attrs = store.read_checkpoint("m", "best")
    tensors[TENSOR] = np.full_like(tensors[TENSOR], np.nan)
    store.write_checkpoint("m", "best", tensors, attrs)
    _one_line_error(_predict(trained, image, tmp_path / "o.tif"), 1, "m/best", "NaN")
    assert not (tmp_path / "o.tif").exists()


# --- interruptions and a full disk ---------------------------------------------------------


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    for i, split in enumerate(("train", "train", "val")):
        image, mask = disks((32, 32), 3, rng)
        write_pair(tmp_path / "src" / split, f"i{i}", image, mask)
    out = tmp_path / "s.zarr"
    prepare(PrepareConfig(source=tmp_path / "src", out=out, crop_size=(32,)))
    return out


def _options(epochs: int, steps: int) -> list[str]:
    return [
        "--epochs",
        str(epochs),
        "--steps-per-epoch",
        str(steps),
        "--batch-size",
        "1",
        "--virtual-batch-multiplier",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
    ]


def _config(store: Path, run: str, epochs: int, steps: int, **changes: object) -> TrainConfig:
    return TrainConfig(
        store=store,
        run=run,
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=1,
        virtual_batch_multiplier=1,
        device="cpu",
        workers=0,
        **changes,  # type: ignore[arg-type]
    )


def _weights(store: Path, run: str) -> dict[str, np.ndarray]:
    tensors, _ = ProjectStore.open(store).read_checkpoint(run, "last")
    return tensors


def _assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert np.array_equal(value, b[name]), name


@pytest.mark.slow
def test_sigint_mid_epoch_then_resume_equals_an_uninterrupted_run(small_store: Path) -> None:
    """Finding 8: Ctrl-C saved mid-epoch weights as the previous epoch's; resume differed."""
    epochs, steps = 3, 12
    train(_config(small_store, "straight", epochs, steps))
    command = [
        sys.executable,
        "-m",
        "embedseg_cli",
        "train",
        str(small_store),
        "--run",
        "cut",
        *_options(epochs, steps),
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert process.stderr is not None
    for line in process.stderr:  # interrupt once the first epoch is saved: mid-second epoch
        if "epoch 1/3" in line:
            process.send_signal(signal.SIGINT)
            break
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "Traceback" not in rest
    _, attrs = ProjectStore.open(small_store).read_checkpoint("cut", "last")
    assert attrs["epoch"] in (0, 1)  # the last finished epoch, never a part of one
    train(_config(small_store, "cut", epochs, steps, resume=True))
    _assert_identical(_weights(small_store, "cut"), _weights(small_store, "straight"))


class _SignalAt:
    """A progress sink that sends this process ``signum`` at batch ``step`` of the run."""

    def __init__(self, step: int, signum: int) -> None:
        self.left, self.signum = step, signum

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left == 0:
            os.kill(os.getpid(), self.signum)

    def finish(self) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("step", [2, 5])  # in the first epoch (no checkpoint yet), the second
def test_sigterm_is_like_ctrl_c_and_resume_is_exact(small_store: Path, step: int) -> None:
    epochs, steps = 2, 3
    train(_config(small_store, "straight", epochs, steps))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train(_config(small_store, "cut", epochs, steps), progress=_SignalAt(step, signal.SIGTERM))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    _, attrs = ProjectStore.open(small_store).read_checkpoint("cut", "last")
    assert attrs["epoch"] == (step - 1) // steps - 1
    train(_config(small_store, "cut", epochs, steps, resume=True))
    _assert_identical(_weights(small_store, "cut"), _weights(small_store, "straight"))


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_one(small_store: Path) -> None:
    """Disk full (a file-size limit: EFBIG) during a checkpoint write: exit 1, one line, the
    previous checkpoints untouched, nothing half-written left, and --resume finishes."""
    runner = CliRunner()
    first = runner.invoke(app, ["-q", "train", str(small_store), "--run", "r", *_options(1, 1)])
    assert first.exit_code == 0, first.stderr
    before = _files(small_store)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))  # metadata fits, weights do not
    try:
        full = runner.invoke(
            app, ["-q", "train", str(small_store), "--run", "r", "--resume", *_options(2, 1)]
        )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    line = _one_line_error(full, 1, "cannot write checkpoint r/", "--resume")
    assert os.strerror(errno.EFBIG) in line
    # No staging folder left, no checkpoint replaced. The run's metrics may already list
    # the epoch whose 'last' failed: --resume keeps only those up to last's epoch.
    after = _files(small_store)
    assert {k: v for k, v in after.items() if not k.startswith("runs/")} == {
        k: v for k, v in before.items() if not k.startswith("runs/")
    }
    assert not [
        p for p in small_store.rglob(".*") if p.name.startswith((".incomplete", ".replaced"))
    ]
    done = runner.invoke(
        app, ["-q", "train", str(small_store), "--run", "r", "--resume", *_options(2, 1)]
    )
    assert done.exit_code == 0, done.stderr
    assert ProjectStore.open(small_store).read_checkpoint("r", "last")[1]["epoch"] == 1
