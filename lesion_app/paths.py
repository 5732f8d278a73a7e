"""Paths as artifacts record them: relative to the repository root when inside it.

The manifest and cv.json store the fold files this way, so a checkout elsewhere still finds
them. These two functions are the project's one writer and reader of such paths.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent   # lesion_app/
REPO = PACKAGE.parent


def repo_relative(path: Path | str) -> str:
    """The path as recorded: relative to the repository root when inside it, else as given."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def repo_path(recorded: Path | str) -> Path:
    """The inverse of repo_relative: a recorded path, relative ones taken from the repository root."""
    return REPO / recorded
