"""A site's lifetime privacy ledger: every training round's spend, across runs.

One JSON file per site (``<site-dir>/privacy-ledger.json``). Each entry records a round
of one run: the run's cumulative accountant history after that round, its ε and δ, the
accountant, the time, and whether the round was trained or refused. Entries are chained
by sha256 (each names the previous entry's hash) and the file is rewritten atomically,
so a crash mid-write leaves the previous ledger intact and an edited ledger is refused,
never silently reset.

Lifetime ε composes every distinct release history (each run's cumulative history, plus
any earlier history a run lost by restarting) with the same accountant at the current δ:
sound, and tighter than adding the ε's. The chain detects an edited, reordered or removed
entry; removing the *last* entries cannot be detected without an outside anchor.
"""

from __future__ import annotations

import fcntl
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
REQUIRED = {"run_id", "round", "status", "history", "epsilon_run", "delta", "accountant",
            "previous", "hash"}


def _extends(prev: History, new: History) -> bool:
    """Whether ``new`` continues ``prev`` (the same releases, the last one with more steps),
    as a run's cumulative history does from one round to the next."""
    if not prev:
        return True
    k = len(prev) - 1
    if len(new) < len(prev) or [tuple(h) for h in new[:k]] != [tuple(h) for h in prev[:k]]:
        return False
    return tuple(new[k][:2]) == tuple(prev[k][:2]) and new[k][2] >= prev[k][2]


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
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise DataError(f"{LEDGER_FILE} has no list of entries")
        previous = GENESIS
        for i, entry in enumerate(entries):
            if (not isinstance(entry, dict) or not REQUIRED <= set(entry)
                    or entry.get("previous") != previous
                    or entry.get("hash") != _entry_hash(entry)):
                raise DataError(f"{LEDGER_FILE} entry {i} fails its integrity check (edited, "
                                "reordered, or an earlier entry removed); the ledger is refused")
            previous = entry["hash"]
        return cls(path, site, list(entries))

    # --- reading ---------------------------------------------------------------------

    def segments(self) -> tuple[list[History], dict[int, History]]:
        """Every distinct release history: finished ones, and each run's current one.

        A run's entries are cumulative, so each one supersedes the previous when it
        continues it. When it does not (the node restarted and lost its state, or a run
        id was reused), the earlier history is kept as a finished segment: what left the
        site then is still spent. Refused and released entries count too.
        """
        closed: list[History] = []
        current: dict[int, History] = {}
        for e in self.entries:
            history = [tuple(h) for h in e["history"]]
            if e["status"] == "no-dp" or not history:
                continue
            run = e["run_id"]
            if run in current and not _extends(current[run], history):
                closed.append(current[run])
            current[run] = history
        return closed, current

    def lifetime_epsilon(self, *, delta: float, accountant: str, run_id: int | None = None,
                         extra: History | None = None) -> float:
        """ε of every recorded release composed, plus ``extra`` (what run ``run_id`` would
        have released after a round about to run; it supersedes that run's current
        history when it continues it)."""
        if any(e["status"] == "no-dp" for e in self.entries):
            return math.inf  # a round trained without DP has no finite ε
        closed, current = self.segments()
        histories = list(closed)
        for run, history in current.items():
            if not (run == run_id and extra is not None and _extends(history, extra)):
                histories.append(history)
        if extra:
            histories.append(list(extra))
        return epsilon_from_history([h for hist in histories for h in hist], delta=delta,
                                    accountant=accountant)

    def check(self, *, run_id: int, history_after: History, delta: float, accountant: str,
              limit: float) -> None:
        """Refuse (``PrivacyBudgetExceeded``) if this run's history becoming
        ``history_after`` would take the lifetime ε past ``limit``.

        ``limit`` <= 0 or infinite means no lifetime limit (simulation default).
        """
        if not 0 < limit < math.inf:
            return
        eps = self.lifetime_epsilon(delta=delta, accountant=accountant, run_id=run_id,
                                    extra=history_after)
        if eps > limit:
            spent = self.lifetime_epsilon(delta=delta, accountant=accountant)
            raise PrivacyBudgetExceeded(
                f"lifetime budget: spent ε={spent:.3f}, this round would bring it to "
                f"ε={eps:.3f}, limit privacy.lifetime-epsilon={limit}"
            )

    # --- writing ---------------------------------------------------------------------

    def append(self, *, run_id: int, server_round: int, status: str, history: History,
               epsilon_run: float, delta: float, accountant: str, limit: float) -> None:
        """Add one entry and rewrite the file atomically.

        Under an exclusive lock the ledger is re-read (and re-verified) first, so that two
        runs writing at once both keep their entries.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(LEDGER_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.entries = Ledger.open(self.path.parent, self.site).entries
            self._append_locked(run_id=run_id, server_round=server_round, status=status,
                                history=history, epsilon_run=epsilon_run, delta=delta,
                                accountant=accountant, limit=limit)

    def _append_locked(self, *, run_id: int, server_round: int, status: str,
                       history: History, epsilon_run: float, delta: float, accountant: str,
                       limit: float) -> None:
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
            elif e["status"] == "refused":
                r["rounds_refused"] += 1
        return list(rows.values())
