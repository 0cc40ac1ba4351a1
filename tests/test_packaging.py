"""What the built wheel ships, and what ``import fsqueue`` costs a cron agent at start-up."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent

#: Top-level import names the wheel installs: the queue and the watchdog daemon (never ``watchdog``).
EXPECTED_TOP_LEVEL = frozenset({"fsqueue", "fsqueue_watchdog"})

#: Console scripts the wheel declares, with their entry points.
EXPECTED_SCRIPTS = {"fsqueue": "fsqueue._entry:main", "fsqueue-watchdog": "fsqueue_watchdog.cli:main"}

#: Imported where used, never by ``import fsqueue``: a cron agent pays every import every minute.
HEAVY_IMPORTS = ("psutil", "yaml", "click", "filelock")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout (hatchling, through pip)."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(PROJECT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("fsqueue-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    """Every file name in the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def dist_info(names: list[str], file: str) -> str:
    """The path of ``file`` inside the wheel's ``.dist-info`` directory."""
    (path,) = [n for n in names if n.split("/")[0].endswith(".dist-info") and n.endswith(f"/{file}")]
    return path


def top_level_imports(names: list[str]) -> set[str]:
    """Import names a wheel installs at top level: its packages and loose modules."""
    tops = set()
    for name in names:
        first, _, rest = name.partition("/")
        if first.endswith((".dist-info", ".data")):
            continue
        if rest:
            tops.add(first)
        elif first.endswith(".py"):
            tops.add(first.removesuffix(".py"))
    return tops


def test_wheel_top_level_imports_are_exactly_expected(names: list[str]) -> None:
    """The wheel installs only our own import names (never a top-level ``watchdog``)."""
    assert top_level_imports(names) == EXPECTED_TOP_LEVEL
    assert all(not n.startswith(("tests/", "watchdog/", "bench/", "demo/")) for n in names)


def test_wheel_ships_py_typed(names: list[str]) -> None:
    """Every package carries the ``py.typed`` marker, so type checkers use our annotations."""
    for package in EXPECTED_TOP_LEVEL:
        assert f"{package}/py.typed" in names


def test_wheel_declares_the_console_scripts(wheel: Path, names: list[str]) -> None:
    """``fsqueue`` (and the watchdog's script) are declared, pointing at their entry points."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(dist_info(names, "entry_points.txt")).decode()
    entry_points = configparser.ConfigParser()
    entry_points.read_string(text)
    scripts = {name: target.strip() for name, target in entry_points["console_scripts"].items()}
    assert scripts == EXPECTED_SCRIPTS


def test_wheel_metadata_names_runtime_dependencies(wheel: Path, names: list[str]) -> None:
    """The wheel requires the four runtime packages and Python 3.11+."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(dist_info(names, "METADATA")).decode()
    requires = {
        match.group(1).lower()
        for line in metadata.splitlines()
        if (match := re.match(r"Requires-Dist: ([A-Za-z0-9_.-]+)", line)) and "extra ==" not in line
    }
    assert requires == {"filelock", "psutil", "pyyaml", "click"}
    assert "Requires-Python: >=3.11" in metadata


def test_built_wheel_runs_the_cli(wheel: Path, tmp_path: Path) -> None:
    """The wheel's own code (unpacked ahead of the checkout on sys.path) answers ``--help``."""
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    env = dict(os.environ, PYTHONPATH=str(unpacked))
    where = subprocess.run(
        [sys.executable, "-c", "import fsqueue; print(fsqueue.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(unpacked)
    proc = subprocess.run(
        [sys.executable, "-m", "fsqueue", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: ")


def test_console_script_help_works() -> None:
    """The installed ``fsqueue`` console script prints its help."""
    script = Path(sys.executable).parent / "fsqueue"
    assert script.exists(), f"{script} missing: is the project installed in this environment?"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0
    assert "Usage: fsqueue" in proc.stdout and "enqueue" in proc.stdout


def test_import_fsqueue_loads_no_heavy_dependency() -> None:
    """``import fsqueue`` loads none of psutil, yaml, click, filelock (start-up cost for cron agents)."""
    code = f"import fsqueue, sys; print(','.join(sorted(m for m in {HEAVY_IMPORTS!r} if m in sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == ""
