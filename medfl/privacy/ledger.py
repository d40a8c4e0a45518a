"""A site's lifetime privacy ledger: every training round's spend, across runs.

One JSON file per site (``<site-dir>/privacy-ledger.json``). Each entry records a round
of one run: the run's cumulative accountant history after that round, its ε and δ, the
accountant, the time, and whether the round was trained or refused. Entries are chained
by sha256 (each names the previous entry's hash) and the file is rewritten atomically,
so a crash mid-write leaves the previous ledger intact and an edited or truncated ledger
is refused, never silently reset.

Lifetime ε composes the *last* history of every run (each run's history is cumulative)
with the same accountant at the current δ: sound, and tighter than adding the ε's.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medfl.errors import DataError, PrivacyBudgetExceeded
from medfl.io import atomic_write_json
from medfl.privacy.dp import History, epsilon_from_history

LEDGER_FILE = "privacy-ledger.json"
FORMAT = "medfl-privacy-ledger/1"
GENESIS = "0" * 64


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Ledger:
    """The entries of one site's ledger (load with :meth:`open`)."""

    path: Path
    site: str
    entries: list[dict[str, Any]]

    @classmethod
    def read(cls, site_dir: Path) -> Ledger:
        """Load and verify a ledger whose site name is taken from the file itself."""
        path = Path(site_dir) / LEDGER_FILE
        if not path.is_file():
            raise DataError(f"no {LEDGER_FILE} in the given site folder; a site's ledger is "
                            "created by its first training round")
        try:
            site = json.loads(path.read_text()).get("site", "")
        except (OSError, json.JSONDecodeError, AttributeError):
            site = ""
        return cls.open(site_dir, str(site))

    @classmethod
    def open(cls, site_dir: Path, site: str) -> Ledger:
        """Load and verify the ledger in ``site_dir`` (an absent ledger is an empty one).

        Raises ``DataError`` naming the file and the first broken entry when the ledger
        is unreadable, belongs to another site, or its hash chain does not verify.
        """
        path = Path(site_dir) / LEDGER_FILE
        if not path.exists():
            return cls(path, site, [])
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{LEDGER_FILE} is unreadable or not JSON ({type(exc).__name__}); "
                            "it is kept as is: restore it from a backup, never delete it "
                            "to reset the budget") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{LEDGER_FILE} is not a {FORMAT} file")
        if data.get("site") != site:
            raise DataError(f"{LEDGER_FILE} belongs to site {data.get('site')!r}, not {site!r}")
        previous = GENESIS
        for i, entry in enumerate(data.get("entries", [])):
            if entry.get("previous") != previous or entry.get("hash") != _entry_hash(entry):
                raise DataError(f"{LEDGER_FILE} entry {i} fails its integrity check (edited, "
                                "reordered or truncated); the ledger is refused")
            previous = entry["hash"]
        return cls(path, site, list(data["entries"]))

    # --- reading ---------------------------------------------------------------------

    def run_histories(self, *, exclude_run: int | None = None) -> dict[int, History]:
        """The last recorded (cumulative) history of every run."""
        out: dict[int, History] = {}
        for e in self.entries:
            if e["status"] == "trained" and e["run_id"] != exclude_run:
                out[e["run_id"]] = [tuple(h) for h in e["history"]]
        return out

    def lifetime_epsilon(self, *, delta: float, accountant: str,
                         extra: History | None = None, exclude_run: int | None = None) -> float:
        """ε of every recorded run composed (plus ``extra``, e.g. a round about to run)."""
        if any(e["status"] == "no-dp" and e["run_id"] != exclude_run for e in self.entries):
            return math.inf  # a round trained without DP has no finite ε
        history = [h for hist in self.run_histories(exclude_run=exclude_run).values()
                   for h in hist]
        return epsilon_from_history([*history, *(extra or [])], delta=delta,
                                    accountant=accountant)

    def check(self, *, run_id: int, history_after: History, delta: float, accountant: str,
              limit: float) -> None:
        """Refuse (``PrivacyBudgetExceeded``) if this run's history becoming
        ``history_after`` would take the lifetime ε past ``limit``.

        ``limit`` <= 0 or infinite means no lifetime limit (simulation default).
        """
        if not 0 < limit < math.inf:
            return
        eps = self.lifetime_epsilon(delta=delta, accountant=accountant, extra=history_after,
                                    exclude_run=run_id)
        if eps > limit:
            spent = self.lifetime_epsilon(delta=delta, accountant=accountant)
            raise PrivacyBudgetExceeded(
                f"lifetime budget: spent ε={spent:.3f}, this round would bring it to "
                f"ε={eps:.3f}, limit privacy.lifetime-epsilon={limit}"
            )

    # --- writing ---------------------------------------------------------------------

    def append(self, *, run_id: int, server_round: int, status: str, history: History,
               epsilon_run: float, delta: float, accountant: str, limit: float) -> None:
        """Add one entry and rewrite the file atomically."""
        entry = {
            "run_id": int(run_id), "round": int(server_round), "status": status,
            "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "history": [[float(s), float(q), int(n)] for s, q, n in history],
            "epsilon_run": float(epsilon_run) if math.isfinite(epsilon_run) else None,
            "delta": float(delta), "accountant": accountant,
            "lifetime_limit": float(limit) if 0 < limit < math.inf else None,
            "previous": self.entries[-1]["hash"] if self.entries else GENESIS,
        }
        entry["hash"] = _entry_hash(entry)
        atomic_write_json(self.path, {"format": FORMAT, "site": self.site,
                                      "entries": [*self.entries, entry]})
        self.entries.append(entry)

    # --- reporting -------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """One row per run: rounds trained/refused, ε of the run, δ, accountant, times."""
        rows: dict[int, dict[str, Any]] = {}
        for e in self.entries:
            r = rows.setdefault(e["run_id"], {
                "run_id": e["run_id"], "first_utc": e["time_utc"], "rounds_trained": 0,
                "rounds_refused": 0, "epsilon": 0.0, "delta": e["delta"],
                "accountant": e["accountant"]})
            r["last_utc"] = e["time_utc"]
            if e["status"] in ("trained", "no-dp"):
                r["rounds_trained"] += 1
                r["epsilon"] = e["epsilon_run"] if e["status"] == "trained" else math.inf
            else:
                r["rounds_refused"] += 1
        return list(rows.values())
