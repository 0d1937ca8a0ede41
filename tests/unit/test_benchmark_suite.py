"""The benchmark suite's choice of what a run writes (a half run must not clobber the page)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks.suite import ROOT, write_target

PAGE = ROOT / "docs" / "performance.md"


def args(
    mode: str = "all", quick: bool = False, write: Path | None = None, no_write: bool = False
) -> argparse.Namespace:
    return argparse.Namespace(mode=mode, quick=quick, write=write, no_write=no_write)


def test_only_a_full_run_of_both_modes_writes_the_page_by_default() -> None:
    assert write_target(args()) == PAGE
    assert write_target(args(mode="table")) is None
    assert write_target(args(mode="latency-target")) is None
    assert write_target(args(quick=True)) is None


@pytest.mark.parametrize("mode", ["all", "table", "latency-target"])
def test_write_and_no_write_win(mode: str, tmp_path: Path) -> None:
    assert write_target(args(mode=mode, quick=True, write=tmp_path / "x.md")) == tmp_path / "x.md"
    assert write_target(args(mode=mode, no_write=True)) is None
