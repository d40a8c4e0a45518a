"""The images' Dockerfiles, read as text (building them is tests/deploy/test_containers.py)."""

from __future__ import annotations

from pathlib import Path


def test_the_three_dockerfiles_share_their_dependency_part_line_for_line():
    # Docker builds the dependency layers once only while these parts are identical (and
    # the images then take one image's disk space): a drift in one file would silently
    # triple the build and the disk
    root = Path(__file__).resolve().parents[2] / "deploy"
    parts = set()
    for image in ("superlink", "supernode", "api"):
        text = (root / f"Dockerfile.{image}").read_text()
        start, end = text.index("ARG BASE_IMAGE="), text.index("# --- end of the shared part")
        parts.add(text[start:end])
    assert len(parts) == 1
