"""Create and fill ``outputs/<run-name>/`` (the stable interface described in DESIGN.md)."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import medfl
from medfl.config import RunConfig
from medfl.errors import ConfigError
from medfl.io import append_jsonl, atomic_write_json

#: written into a run folder whose run stopped before it finished (:meth:`mark_failed`)
FAILED_FILE = "failed.json"
LIBRARIES = ("medfl", "flwr", "torch", "opacus", "monai", "numpy", "scikit-learn", "pandas")


def project_root() -> Path | None:
    """The source checkout holding this package (editable installs), if there is one."""
    root = Path(medfl.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def resolve_output_root(cfg: RunConfig) -> Path:
    """Absolute folder for runs: ``output-dir`` if set, else ``<project>/outputs``.

    Flower runs the ServerApp in the working directory of whoever started the SuperLink,
    so a relative path would land somewhere surprising: relative ``output-dir`` values
    are resolved against ``$MEDFL_HOME`` if set, else the checkout holding the installed
    package, and only as a last resort the working directory.
    """
    home = os.environ.get("MEDFL_HOME")
    base = Path(home) if home else (project_root() or Path.cwd())
    if not cfg.output_dir:
        return base / "outputs"
    path = Path(cfg.output_dir).expanduser()
    return path if path.is_absolute() else base / path


def jsonable(value: Any) -> Any:
    """Replace non-finite floats with strings ("inf", "-inf", "nan") so JSON stays strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    return value


def environment() -> dict[str, Any]:
    """Library versions and hardware, for reproducibility (no user or host names)."""
    versions: dict[str, str | None] = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA install must not stop the run record
        gpu = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "libraries": versions,
    }


@dataclass
class RunDirectory:
    """One run's folder. Files are written atomically; ``rounds.jsonl`` grows per round."""

    path: Path

    @classmethod
    def create(cls, root: Path, run_name: str) -> RunDirectory:
        """Make a new run folder under ``root`` (created if missing).

        With no ``run_name`` the folder is named by the UTC time, suffixed ``-1``,
        ``-2``... on collision; a given ``run_name`` that already exists raises
        ``ConfigError``, since a run is never overwritten.
        """
        root.mkdir(parents=True, exist_ok=True)
        name = run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = root / name
        if path.exists():
            if run_name:
                raise ConfigError(
                    f"run-name {run_name!r} already exists under the output folder; "
                    "choose another name (existing runs are never overwritten)"
                )
            i = 1
            while (root / f"{name}-{i}").exists():
                i += 1
            path = root / f"{name}-{i}"
        path.mkdir()
        return cls(path)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as strict JSON to ``<run>/<name>`` atomically; returns the path."""
        target = self.path / name
        atomic_write_json(target, jsonable(obj))
        return target

    def append_round(self, record: dict[str, Any]) -> None:
        """Append one round's record as a line of ``rounds.jsonl``."""
        append_jsonl(self.path / "rounds.jsonl", jsonable(record))

    def mark_failed(self, reason: str) -> Path:
        """Record that this run stopped before it finished (``failed.json``: the reason,
        the UTC time); ``medfl show`` reports it instead of looking for results. The
        folder keeps what was written (``config.json``) and ``latest`` is not moved."""
        return self.write_json(FAILED_FILE, {
            "failed": True, "reason": reason,
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def mark_latest(self) -> Path:
        """Point ``<root>/latest`` at this run (atomic replace of the symlink)."""
        link = self.path.parent / "latest"
        tmp = self.path.parent / f".latest.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path.name, target_is_directory=True)
        os.replace(tmp, link)
        return link


def config_record(cfg: RunConfig, raw: dict[str, Any], run_name: str) -> dict[str, Any]:
    """The run's ``config.json``: name, UTC creation time, seed, the parsed config, the
    raw Flower run config, the environment and the disclaimer."""
    return {
        "run_name": run_name,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "run_config": dict(raw),
        "environment": environment(),
        "disclaimer": medfl.DISCLAIMER,
    }
