"""``train --from MODEL``: fine-tuning starts from a trained model's weights and records it.

The weights a run starts from are read where a run keeps them: a run stopped before its
first batch saves its initial state as ``last`` (epoch -1), before any forward pass could
change even the batch statistics. Library calls come before command-line calls in a test:
a command points the package's logger at the runner's stream, closed after the call.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
from numpy.typing import NDArray
from typer.testing import CliRunner

from embedseg_cli import __version__
from embedseg_cli.cli import app
from embedseg_cli.config import ExportModelConfig, PrepareConfig, TrainConfig
from embedseg_cli.export import export_model
from embedseg_cli.io.models import builtin_models, read_model, state_dict_of
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.prepare import prepare
from embedseg_cli.records import BuiltinOrigin, CheckpointRecord, FileOrigin, StoreOrigin
from embedseg_cli.train import train
from tests.conftest import disks, write_pair
from tests.integration.test_cli_errors import one_error_line, snapshot


class _StopBeforeTheFirstBatch:
    """A progress sink that presses Ctrl-C as the first epoch starts, before any batch."""

    def start(self, description: str, total: int) -> None:
        raise KeyboardInterrupt

    def advance(self, steps: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def _prepare(root: Path, name: str, shape: tuple[int, ...], seed: int, **options: Any) -> Path:
    rng = np.random.default_rng(seed)
    for i, split in enumerate(("train", "train", "val")):
        image, mask = disks(shape, 4, rng)
        write_pair(root / f"{name}-src" / split, f"i{i}", image, mask)
    out = root / f"{name}.zarr"
    prepare(PrepareConfig(source=root / f"{name}-src", out=out, **options))
    return out


def _config(store: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = {
        "store": store,
        "epochs": 1,
        "steps_per_epoch": 1,
        "virtual_batch_multiplier": 1,
        "device": "cpu",
    }
    return TrainConfig.model_validate({**base, **changes})


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store to fine-tune on: a few 2D single-channel images."""
    return _prepare(tmp_path_factory.mktemp("target"), "target", (40, 40), 11, crop_size=(32,))


@pytest.fixture(scope="module")
def source_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another store with a trained run ``src`` of embedding scale 512 (not the default)."""
    store = _prepare(tmp_path_factory.mktemp("source"), "source", (48, 40), 12, crop_size=(32,))
    train(_config(store, run="src", embedding_scale=512.0))
    return store


def _weights(store: Path, run: str, tag: str) -> dict[str, NDArray[Any]]:
    tensors, _ = ProjectStore.open(store).read_checkpoint(run, tag)
    return {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}


def _record(store: Path, run: str, tag: str) -> CheckpointRecord:
    return CheckpointRecord.model_validate(ProjectStore.open(store).read_checkpoint(run, tag)[1])


def _same(stored: NDArray[Any], tensor: torch.Tensor) -> bool:
    """Whether a stored weight is the tensor, value for value and of its data type.

    Checkpoints store a 0-d tensor (a batch norm's ``num_batches_tracked``) with shape (1,).
    """
    value = tensor.numpy()
    return (
        stored.dtype == value.dtype
        and stored.size == value.size
        and np.array_equal(stored.reshape(value.shape), value)
    )


def _assert_equal(weights: dict[str, NDArray[Any]], expected: dict[str, torch.Tensor]) -> None:
    assert set(weights) == set(expected)
    assert [name for name, value in expected.items() if not _same(weights[name], value)] == []


def _moved(weights: dict[str, NDArray[Any]], expected: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, value in expected.items() if not _same(weights[name], value)}


def _initial_weights(target: Path, **changes: object) -> dict[str, NDArray[Any]]:
    """The weights a run of ``target`` starts from: its state when stopped before any batch."""
    config = _config(target, **changes)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=_StopBeforeTheFirstBatch())
    assert config.run is not None
    assert _record(target, config.run, "last").epoch == -1
    return _weights(target, config.run, "last")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fine_tuning_from_the_builtin_model_starts_from_its_weights(target: Path) -> None:
    builtin_model = read_model("dsb2018-fluo")
    source = state_dict_of(builtin_model)
    initial = _initial_weights(
        target, from_model="dsb2018-fluo", run="builtin", tune_thresholds=True
    )
    _assert_equal(initial, source)

    # The stopped run continues from that state; one optimiser step moves the weights.
    train(_config(target, run="builtin", resume=True))
    moved = _moved(_weights(target, "builtin", "last"), source)
    assert any(".output_conv." in name for name in moved)
    assert any(name.startswith("encoder.") for name in moved)

    (builtin,) = [m for m in builtin_models() if m.name == "dsb2018-fluo"]
    origin = BuiltinOrigin(name="dsb2018-fluo", version=__version__, sha256=_sha256(builtin.path))
    store = ProjectStore.open(target)
    for tag in ("best", "last"):
        record = _record(target, "builtin", tag)
        assert record.started_from == origin
        # Everything about the data is the store's, nothing is the built-in model's.
        assert record.data == store.properties
        assert record.thresholds.min_object_size == store.properties.min_object_size
        assert record.builtin is None
        assert record.config["from_model"] == "dsb2018-fluo"
        assert record.epoch == 0
        assert record.data.n_objects != builtin_model.record.data.n_objects
    # The threshold is chosen on the store's validation images, not taken from the model.
    (epoch,) = store.run_metrics("builtin")
    assert record.thresholds.foreground == epoch["foreground_threshold"]
    assert record.best_ap == epoch["val_ap50"]


def test_fine_tuning_from_a_store_takes_its_checkpoint_and_embedding_scale(
    target: Path, source_store: Path
) -> None:
    source = {k: torch.from_numpy(v) for k, v in _weights(source_store, "src", "last").items()}
    initial = _initial_weights(
        target, from_model=str(source_store), from_run="src", from_checkpoint="last", run="store"
    )
    _assert_equal(initial, source)
    train(_config(target, run="store", resume=True))
    assert _moved(_weights(target, "store", "last"), source)
    record = _record(target, "store", "best")
    assert record.started_from == StoreOrigin(
        path=str(source_store.resolve()), run="src", checkpoint="last", epoch=0
    )
    # The offsets the weights predict are in the source's unit, so that unit is kept.
    assert record.model.embedding_scale == 512.0
    assert record.config["embedding_scale"] == 512.0
    assert record.data == ProjectStore.open(target).properties


def test_fine_tuning_from_an_exported_model_and_exporting_the_result(
    target: Path, source_store: Path, tmp_path: Path
) -> None:
    exported = tmp_path / "source.pt"
    export_model(
        ExportModelConfig(model=str(source_store), run="src", format="torchscript", out=exported)
    )
    source = state_dict_of(read_model(exported))
    _assert_equal(_initial_weights(target, from_model=str(exported), run="file"), source)
    runner = CliRunner()

    result = runner.invoke(
        app,
        [
            "-q",
            "train",
            str(target),
            "--from",
            str(exported),
            "--run",
            "file",
            "--resume",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 2, result.output  # --from belongs to the new run, not --resume
    result = runner.invoke(
        app,
        ["-q", "train", str(target), "--run", "file", "--resume", "--device", "cpu", "--json"],
    )
    assert result.exit_code == 0, result.output
    # The source's run started from random weights: the record ends there.
    origin = FileOrigin(path=str(exported.resolve()), sha256=_sha256(exported))
    assert json.loads(result.stdout)["started_from"] == origin.model_dump(mode="json")
    assert _moved(_weights(target, "file", "last"), source)
    assert _record(target, "file", "best").started_from == origin

    # Exports carry the record on, and fine-tuning from an export keeps the whole chain.
    again = tmp_path / "fine-tuned.pt"
    result = runner.invoke(
        app,
        [
            "-q",
            "export",
            "model",
            str(target),
            "--run",
            "file",
            "--out",
            str(again),
            "--format",
            "torchscript",
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_model(again).record.started_from == origin
    assert read_model(again).provenance == FileOrigin(
        path=str(again.resolve()), sha256=_sha256(again), started_from=origin
    )


def test_a_bioimageio_package_says_what_it_was_fine_tuned_from(
    target: Path, tmp_path: Path
) -> None:
    pytest.importorskip("bioimageio.spec")
    # Nuclei of the built-in model's size, which it finds: the package needs a test output.
    image, _ = disks((64, 64), 5, np.random.default_rng(4), radius=(8, 11))
    tifffile.imwrite(tmp_path / "nuclei.tif", image)
    train(_config(target, from_model="dsb2018-fluo", run="package", learning_rate=1e-6))
    package = tmp_path / "model.zip"
    export_model(
        ExportModelConfig(
            model=str(target),
            run="package",
            format="bioimageio",
            out=package,
            image=tmp_path / "nuclei.tif",
        )
    )
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
    recorded = _record(target, "package", "best").started_from
    assert recorded is not None
    assert rdf["config"]["embedseg"]["started_from"] == recorded.model_dump(mode="json")
    assert "Fine-tuned from" in readme
    assert "the built-in model dsb2018-fluo" in readme

    # The package is a model to start from too.
    initial = _initial_weights(target, from_model=str(package), run="from-package")
    _assert_equal(initial, state_dict_of(read_model(package)))
    record = _record(target, "from-package", "last")
    assert isinstance(record.started_from, FileOrigin)
    assert record.started_from.sha256 == _sha256(package)
    assert record.started_from.started_from == recorded


def test_training_only_the_decoders_keeps_the_encoder(target: Path) -> None:
    source = state_dict_of(read_model("dsb2018-fluo"))
    train(_config(target, from_model="dsb2018-fluo", run="decoders", train_layers="decoders"))
    moved = _moved(_weights(target, "decoders", "last"), source)
    assert moved
    assert not [name for name in moved if name.startswith("encoder.")]
    assert any(name.startswith("offset_decoder.") for name in moved)
    assert any(name.startswith("seed_decoder.") for name in moved)


def test_the_finetune_preset_sets_a_small_learning_rate_and_tunes_thresholds(
    target: Path,
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "-q",
            "train",
            str(target),
            "--from",
            "dsb2018-fluo",
            "--preset",
            "finetune",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--run",
            "preset",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "started from the built-in model dsb2018-fluo" in result.stdout
    record = _record(target, "preset", "best")
    assert record.config["learning_rate"] == 1e-4
    assert record.config["tune_thresholds"] is True
    assert record.config["epochs"] == 1  # options given win over the preset


# Errors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 3D model."""
    store = _prepare(tmp_path_factory.mktemp("volume"), "volume", (16, 32, 32), 13, crop_size=(16,))
    train(_config(store, run="v"))
    return store


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 2D images with two channels."""
    root = tmp_path_factory.mktemp("channels")
    rng = np.random.default_rng(14)
    for i, split in enumerate(("train", "val")):
        image, mask = disks((40, 40), 4, rng)
        write_pair(root / "src" / split, f"i{i}", np.stack([image, image // 2], axis=-1), mask)
    out = root / "two.zarr"
    prepare(PrepareConfig(source=root / "src", out=out, crop_size=(32,)))
    return out


def _words(text: str) -> str:
    """``text`` on one line, without the frame Typer draws around a usage error."""
    return " ".join(text.replace("│", " ").split())


def _train_cli(store: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["-q", "train", str(store), "--device", "cpu", "--steps-per-epoch", "1", *args]
    )
    return result.exit_code, result.stderr


def test_a_model_of_other_dimensions_or_channels_is_refused_and_nothing_written(
    target: Path, volume_store: Path, two_channels: Path
) -> None:
    before = snapshot(target)
    code, stderr = _train_cli(target, "--from", str(volume_store), "--run", "wrong")
    assert code == 1
    line = one_error_line(stderr)
    assert f"{volume_store} is a 3D model with 1 channel; {target} holds 2D images" in line
    assert snapshot(target) == before

    before = snapshot(two_channels)
    code, stderr = _train_cli(two_channels, "--from", "dsb2018-fluo")
    assert code == 1
    line = one_error_line(stderr)
    assert "dsb2018-fluo is a 2D model with 1 channel" in line
    assert f"{two_channels} holds 2D images with 2 channels" in line
    assert snapshot(two_channels) == before


def test_a_missing_or_unreadable_model_is_named(target: Path, tmp_path: Path) -> None:
    before = snapshot(target)
    missing = tmp_path / "missing.zip"
    code, stderr = _train_cli(target, "--from", str(missing))
    assert code == 1
    assert str(missing) in one_error_line(stderr)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    code, stderr = _train_cli(target, "--from", str(text))
    assert code == 1
    assert str(text) in one_error_line(stderr)
    folder = tmp_path / "folder"
    folder.mkdir()
    code, stderr = _train_cli(target, "--from", str(folder))
    assert code == 1
    assert str(folder) in one_error_line(stderr)
    assert snapshot(target) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from", "dsb2018-fluo", "--run", "r", "--resume"], "--from: --resume continues"),
        (["--from", "dsb2018-fluo", "--embedding-scale", "512"], "--embedding-scale belongs"),
        (["--from-run", "m"], "--from-run: it picks the checkpoint of the store"),
        (["--from-checkpoint", "last"], "--from-checkpoint: it picks the checkpoint"),
        (["--train-layers", "decoders"], "--train-layers: decoders keeps the other layers'"),
        (["--preset", "finetune"], "give the model to start from with --from"),
    ],
)
def test_options_that_contradict_from_are_usage_errors(
    target: Path, args: list[str], expected: str
) -> None:
    before = snapshot(target)
    code, stderr = _train_cli(target, *args)
    assert code == 2, stderr
    assert expected in _words(stderr)
    assert snapshot(target) == before


def test_prepare_refuses_a_preset_that_sets_only_training_options(tmp_path: Path) -> None:
    image, mask = disks((32, 32), 3, np.random.default_rng(1))
    write_pair(tmp_path / "src", "a", image, mask)
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "p.zarr"),
            "--preset",
            "finetune",
        ],
    )
    assert result.exit_code == 2
    assert "sets no option of prepare" in _words(result.stderr)
    assert not (tmp_path / "p.zarr").exists()
