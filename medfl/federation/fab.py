"""The Flower App Bundle (FAB) of a MedFL project, built as ``flwr run`` builds it.

``flwr run <project>`` cannot submit a pre-built ``.fab``: it always builds one from the
project folder (``flwr.cli.build.build_fab_from_disk``). That build is deterministic
(files sorted, fixed timestamps, entries stored uncompressed), so the FAB built here is
byte for byte the one ``flwr run`` submits from the same folder with the same Flower: the
hash a hospital approves is the hash that runs. Run-config overrides (``--run-config``)
travel beside the FAB, not in it, and do not change the hash.
"""

from __future__ import annotations

from pathlib import Path

from medfl.errors import MedflError
from medfl.site.approval import fab_sha256, read_fab


def build_fab(project: Path) -> bytes:
    """The FAB ``flwr run`` would submit from ``project`` (its bytes); checked with
    :func:`medfl.site.approval.read_fab` (it must not carry a ``medfl/`` package)."""
    from flwr.cli.build import build_fab_from_disk

    project = Path(project).resolve()
    if not (project / "pyproject.toml").is_file():
        raise MedflError(f"{project}: no pyproject.toml; pass the MedFL project folder "
                         "(the one `flwr run` is given)")
    content = bytes(build_fab_from_disk(project))
    read_fab(content)
    return content


def write_fab(project: Path, out: Path) -> tuple[Path, str]:
    """Build the project's FAB into ``out``; returns (path, sha256)."""
    from medfl.io import atomic_write_bytes

    content = build_fab(project)
    atomic_write_bytes(out, content)
    return out, fab_sha256(content)
