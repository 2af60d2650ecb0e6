"""Development tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``imports``, ``bench``, ``demo``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "imports", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
# The CPU build of torch: a bare `torch` requirement would pull several GB of CUDA packages.
TORCH = "torch==2.13.0"


def _install_project(session: nox.Session, *groups: str) -> None:
    session.install(TORCH)
    session.install("-e", ".")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (tests that need ../shared/data skip where it is absent).

    The napari plugin's tests draw in a real viewer: without a display they start Xvfb
    where it is installed (``apt-get install xvfb``, as ``.ci/run`` does) and skip otherwise.
    """
    _install_project(session, "test")
    session.run("pytest", *(session.posargs or ["-m", "not slow and not gpu"]))


@nox.session
def lint(session: nox.Session) -> None:
    """Check and format-check the code with ruff."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy in strict mode."""
    _install_project(session, "typecheck")
    session.run("mypy")


@nox.session
def imports(session: nox.Session) -> None:
    """Check the layer contracts of DESIGN.md with import-linter."""
    _install_project(session, "imports")
    session.run("lint-imports")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks: prints a table, writes JSON and Markdown to benchmarks/results/.

    Also sets up benchmarks/.original-venv (embedseg 0.2.5, a few minutes the first time) so
    that run.py can time the original beside ours; pass ``-- --no-original`` to skip it.
    Where that setup fails, run.py says why and runs our cases alone.
    """
    _install_project(session, "test")
    if "--no-original" not in session.posargs:
        session.run("python", "benchmarks/original/setup_env.py", success_codes=[0, 1])
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run `embedseg demo` (synthetic data to labels, minutes on a CPU) in .nox/demo/tmp."""
    _install_project(session)
    out = Path(session.create_tmp()) / "embedseg-demo"
    session.run("embedseg", "demo", "--out", str(out), "--overwrite", *session.posargs)
