from __future__ import annotations

from pathlib import Path

import pytest

from tests import models


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty model repository directory."""
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def add_sub_repo(repo: Path) -> Path:
    """A repository with one batchable FP32 add_sub model and no config."""
    models.save(models.add_sub(), repo, "add_sub")
    return repo
