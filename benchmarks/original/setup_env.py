"""Create the venv of the original implementation (``embedseg==0.2.5``) for the benchmarks.

``python benchmarks/original/setup_env.py [--force]`` builds ``benchmarks/.original-venv``:
the CPU build of torch, the original's runtime dependencies (pinned to the versions it was
measured with, see ``notes/reference-implementation.md`` section 3) and the 0.2.5 wheel from
PyPI. That wheel installs its modules at the top level of site-packages, so ``import EmbedSeg``
fails; its files are unpacked into ``site-packages/EmbedSeg/`` instead. torchvision is left
out: its PyPI wheels do not load against the CPU torch, and only the original's training data
loaders need it. A marker file written last records a complete venv; a venv without it (a
killed setup) or with other requirements is rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE.parent / ".original-venv"
MARKER = VENV / ".embedseg-original-complete"
LOCK = HERE.parent / ".original-venv.lock"

EMBEDSEG = "embedseg==0.2.5"
# torch is pinned exactly: an open range would pull a CUDA build.
TORCH = "torch==2.13.0"
REQUIREMENTS = [
    TORCH,
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-image==0.26.0",
    "tifffile==2026.3.3",
    "numba==0.68.1",
    "pandas==3.1.1",
    "matplotlib==3.11.2",
    "seaborn==0.13.2",
    "pillow==13.0.0",
    "pycocotools==2.0.11",
    "tqdm==4.70.1",
]
# Imported after the build: fails where the venv cannot run the benchmark.
CHECK = (
    "import numpy as np, tifffile, torch\n"
    "if not hasattr(np, 'bool'):\n"
    "    np.bool = bool\n"
    "tifffile.imsave = tifffile.imwrite\n"
    "import EmbedSeg.models, EmbedSeg.criterions, EmbedSeg.utils.utils\n"
    "import EmbedSeg.utils.generate_crops, EmbedSeg.test\n"
)


class SetupError(RuntimeError):
    """The original's venv could not be built."""


def python() -> Path:
    """The interpreter of the original's venv."""
    return VENV / "bin" / "python"


def _spec() -> dict[str, object]:
    return {"embedseg": EMBEDSEG, "requirements": REQUIREMENTS}


def is_complete() -> bool:
    """Whether the venv exists, was built to the end and with the current requirements."""
    try:
        return json.loads(MARKER.read_text()) == _spec() and python().exists()
    except (OSError, ValueError):
        return False


def _run(command: list[str], what: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        msg = f"{what} failed: {lines[-1]}"
        raise SetupError(msg)
    return done.stdout


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unpack_wheel(wheel: Path, site_packages: Path) -> None:
    """Unpack the wheel's modules into ``site-packages/EmbedSeg/`` (not the top level)."""
    target = site_packages / "EmbedSeg"
    shutil.rmtree(target, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.endswith("/") or member.split("/")[0].endswith(".dist-info"):
                continue
            destination = target / member
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(member))


def _build(log: bool) -> None:
    def say(text: str) -> None:
        if log:
            print(f"original venv: {text}", file=sys.stderr, flush=True)

    shutil.rmtree(VENV, ignore_errors=True)
    say(f"creating {VENV}")
    _run([sys.executable, "-m", "venv", str(VENV)], "python -m venv")
    with tempfile.TemporaryDirectory() as tmp:
        say(f"downloading {EMBEDSEG} from PyPI")
        _run(
            [
                *(str(python()), "-m", "pip", "download", "--no-deps", "-q"),
                *("--retries", "1", "--timeout", "30", "-d", tmp, EMBEDSEG),
            ],
            f"pip download {EMBEDSEG}",
        )
        wheels = sorted(Path(tmp).glob("embedseg-*.whl"))
        if not wheels:
            msg = f"pip download {EMBEDSEG} gave no wheel"
            raise SetupError(msg)
        say("installing " + " ".join(REQUIREMENTS) + " (a few minutes)")
        _run(
            [str(python()), "-m", "pip", "install", "-q", *REQUIREMENTS],
            "pip install of the original's dependencies",
        )
        site_packages = Path(
            _run(
                [str(python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                "finding site-packages",
            ).strip()
        )
        _unpack_wheel(wheels[0], site_packages)
    _run([str(python()), "-c", CHECK], "importing the original")
    MARKER.write_text(json.dumps(_spec()))
    say("ready")


def ensure(force: bool = False, log: bool = True) -> Path:
    """The original's venv interpreter, building the venv first where it is not complete.

    Raises
    ------
    SetupError
        Where a step fails (PyPI unreachable, a package that does not install, ...).
    """
    with _locked():
        if force or not is_complete():
            MARKER.unlink(missing_ok=True)
            _build(log)
    return python()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = parser.parse_args()
    try:
        print(ensure(force=args.force))
    except SetupError as exc:
        print(f"original venv: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
