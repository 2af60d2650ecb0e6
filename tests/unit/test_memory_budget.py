"""The CPU memory budget: the smaller of the system's available RAM and the cgroup limit."""

from pathlib import Path

import psutil
import pytest
import torch

from embedseg_cli.predict.plan import cgroup_memory_available, memory_budget

GB = 10**9


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_limit_less_usage(tmp_path: Path) -> None:
    root = _files(tmp_path, {"memory.max": "2000000000\n", "memory.current": "500000000\n"})
    assert cgroup_memory_available(root) == 1_500_000_000
    # Inactive page cache is reclaimed before the limit is hit: it does not count as used.
    (root / "memory.stat").write_text("anon 300000000\ninactive_file 200000000\nactive_file 1\n")
    assert cgroup_memory_available(root) == 1_700_000_000


def test_cgroup_v1_limit_less_usage(tmp_path: Path) -> None:
    root = _files(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": "1073741824\n",
            "memory/memory.usage_in_bytes": "73741824\n",
            "memory/memory.stat": "cache 5\ntotal_inactive_file 1000000\n",
        },
    )
    assert cgroup_memory_available(root) == 1_000_000_000 + 1_000_000


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"memory.max": "max\n", "memory.current": "123\n"},
        {
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
            "memory/memory.usage_in_bytes": "4096\n",
        },
    ],
    ids=["no cgroup files", "v2 max", "v1 unlimited"],
)
def test_no_cgroup_limit(tmp_path: Path, files: dict[str, str]) -> None:
    assert cgroup_memory_available(_files(tmp_path, files)) is None


def test_cgroup_usage_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    root = _files(tmp_path, {"memory.max": "1000\n", "memory.current": "4096\n"})
    assert cgroup_memory_available(root) == 0


def test_cpu_budget_is_a_quarter_of_the_smaller(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    if psutil.virtual_memory().available < 400_000_000:
        pytest.skip("less than 400 MB of RAM available")
    limited = _files(tmp_path / "a", {"memory.max": "400000000", "memory.current": "0"})
    assert memory_budget(cpu, cgroup=limited) == 100_000_000
    # Without a limit: a quarter of the available RAM, at most 4 GB.
    unlimited = _files(tmp_path / "b", {"memory.max": "max", "memory.current": "0"})
    assert 50_000_000 < memory_budget(cpu, cgroup=unlimited) <= 4 * GB
