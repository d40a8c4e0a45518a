"""A site's lifetime privacy ledger: every release's spend, across runs.

One JSON file per site (``<site-dir>/privacy-ledger.json``). Every attempt that reads
rows under DP (a training round, a noised feature-moment release, a test-set release) is
*reserved* here before it runs (:meth:`Ledger.reserve`): under an exclusive lock on
``privacy-ledger.json.lock`` the ledger is re-read and verified, the lifetime ε with this
attempt composed is checked against the limit, and the entry is appended before the lock
is released. The entry stays whatever happens next (an exception, a crash, a kill): an
attempt is spent when it is reserved, never rolled back.

Each entry records its own ``spend`` (the accountant history of this attempt alone), the
run's cumulative ``history`` after it, its ε at the run's δ, and the site's δ. Entries are
chained by sha256 (each names the previous entry's hash) and the file is rewritten
atomically, so a crash mid-write leaves the previous ledger intact and an edited ledger is
refused, never silently reset.

Lifetime ε composes every entry's spend, whatever run key the server sent, with the same
accountant at the *site's* δ. Entries written before spends were recorded (no ``spend``
key) hold cumulative histories: the last history of each run, and any earlier history a
run lost by restarting, are composed as before. The chain detects an edited, reordered or
removed entry; removing the *last* entries cannot be detected without an outside anchor.

Two budgets share the ledger (each entry's ``budget``): ``train``, every release of the
training rows (DP-SGD rounds, noised feature moments), and ``test``, every release of the
test rows (monitoring evaluations, the final report). The rows are disjoint patients, so
each budget is composed on its own, at its own δ and against its own limit; a patient's ε
is the larger of the two (parallel composition). Entries written before the key existed
are training entries, and their hashes are unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medfl.errors import DataError, PrivacyBudgetExceeded
from medfl.io import atomic_write_json
from medfl.privacy.dp import History, epsilon_from_history, extend_history
from medfl.privacy.ledger_entry import (
    BUDGETS,
    LIMIT_KEYS,
    TEST,
    TRAIN,
    UNBOUNDED,
    Attempt,
    Decide,
    budget_of,
)

__all__ = ["BUDGETS", "LEDGER_FILE", "TEST", "TRAIN", "Attempt", "Decide", "Ledger",
           "budget_of"]

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
            if budget_of(entry) not in BUDGETS:
                raise DataError(f"{LEDGER_FILE} entry {i} spends from budget "
                                f"{budget_of(entry)!r}; this MedFL knows {' and '.join(BUDGETS)}"
                                " (a newer version wrote it): upgrade before reading it")
            previous = entry["hash"]
        return cls(path, site, list(entries))

    # --- reading ---------------------------------------------------------------------

    def segments(self) -> tuple[list[History], dict[int, History]]:
        """Every distinct release history of the entries written before spends were
        recorded (no ``spend`` key): finished ones, and each run's current one.

        Those entries are cumulative, so each one supersedes the previous when it
        continues it. When it does not (the node restarted and lost its state, or a run
        id was reused), the earlier history is kept as a finished segment: what left the
        site then is still spent. Refused and released entries count too.
        """
        closed: list[History] = []
        current: dict[int, History] = {}
        for e in self.of(TRAIN):
            history = [tuple(h) for h in e["history"]]
            if "spend" in e or e["status"] == "no-dp" or not history:
                continue
            run = e["run_id"]
            if run in current and not _extends(current[run], history):
                closed.append(current[run])
            current[run] = history
        return closed, current

    def of(self, budget: str) -> list[dict[str, Any]]:
        """The entries of one budget (``TRAIN`` or ``TEST``), in order."""
        return [e for e in self.entries if budget_of(e) == budget]

    def spends(self, budget: str = TRAIN) -> list[History]:
        """The spend of every entry of ``budget`` that records one: each on its own."""
        return [[(float(s), float(q), int(n)) for s, q, n in e["spend"]]
                for e in self.of(budget) if e.get("spend")]

    def released(self, run_tag: str, release: str, server_round: int | None) -> bool:
        """Whether ``release`` of the run ``run_tag`` was already reserved (at
        ``server_round``; None: at any round): a test-set release is made once."""
        return any(e.get("run_tag") == run_tag and e.get("release") == release
                   and e["status"] != "refused"
                   and (server_round is None or e["round"] == server_round)
                   for e in self.of(TEST))

    def run_history(self, run_tag: str, fallback: History) -> History:
        """The run's cumulative history after its last recorded attempt (``run_tag``
        names the run's DP state), else ``fallback`` (the run's own saved state)."""
        for e in reversed(self.entries):
            if "spend" in e and e.get("run_tag") == run_tag:
                return [(float(s), float(q), int(n)) for s, q, n in e["history"]]
        return list(fallback)

    def lifetime_epsilon(self, *, delta: float, accountant: str,
                         extra: History | None = None, budget: str = TRAIN) -> float:
        """ε at ``delta`` of every recorded release of ``budget`` composed, plus
        ``extra`` (the spend of an attempt about to be reserved)."""
        if any(e["status"] == UNBOUNDED[budget] for e in self.of(budget)):
            return math.inf  # training without DP, or exact test figures: no finite ε
        closed, current = self.segments() if budget == TRAIN else ([], {})
        histories = [*closed, *current.values(), *self.spends(budget), list(extra or [])]
        return epsilon_from_history([h for hist in histories for h in hist], delta=delta,
                                    accountant=accountant)

    def check(self, *, spend: History, delta: float, accountant: str, limit: float,
              budget: str = TRAIN) -> None:
        """Refuse (``PrivacyBudgetExceeded``) if ``spend`` composed with every recorded
        release of ``budget`` would take its lifetime ε at ``delta`` past ``limit``.

        ``limit`` <= 0 or infinite means no lifetime limit (simulation default).
        """
        if not 0 < limit < math.inf:
            return
        eps = self.lifetime_epsilon(delta=delta, accountant=accountant, extra=spend,
                                    budget=budget)
        if eps > limit:
            spent = self.lifetime_epsilon(delta=delta, accountant=accountant, budget=budget)
            raise PrivacyBudgetExceeded(
                f"lifetime budget ({budget} rows): spent ε={spent:.3f}, this attempt would "
                f"bring it to ε={eps:.3f}, limit {LIMIT_KEYS[budget]}={limit}"
            )

    # --- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the site's exclusive ledger lock, the entries re-read and verified."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(LEDGER_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            self.entries = Ledger.open(self.path.parent, self.site).entries
            yield

    def reserve(self, attempt: Attempt, decide: Decide, *, fallback: History) -> History:
        """Check and record one attempt atomically, before it reads any row.

        Under the lock: the ledger is re-read and verified; the run's history before this
        attempt is the last one recorded for ``attempt.run_tag`` (else ``fallback``);
        ``decide(before)`` gives this attempt's spend and the run's ε after it, or raises
        ``PrivacyBudgetExceeded`` (a run-level refusal); the lifetime ε of the attempt's
        budget at the site's δ with the spend composed must stay within the limit. A
        refusal is recorded (status ``refused``, nothing spent) and raised; otherwise the
        entry is appended, and it stays whatever happens next. Returns the run's history
        after this attempt.
        """
        with self._locked():
            before = self.run_history(attempt.run_tag, fallback)
            try:
                spend, epsilon_run = decide(before)
                self.check(spend=spend, delta=attempt.site_delta, accountant=attempt.accountant,
                           limit=attempt.limit, budget=attempt.budget)
            except PrivacyBudgetExceeded:
                self._append_locked(attempt.entry("refused", [], before, math.nan))
                raise
            after = list(before)
            for sigma, rate, steps in spend:
                after = extend_history(after, sigma, rate, steps)
            self._append_locked(attempt.entry(attempt.status, spend, after, epsilon_run))
        return after

    def record(self, attempt: Attempt, *, status: str, history: History,
               epsilon_run: float) -> None:
        """Append one entry that spends nothing (``refused``, ``no-dp``) under the lock."""
        with self._locked():
            self._append_locked(attempt.entry(status, [], history, epsilon_run))

    def append(self, *, run_id: int, server_round: int, status: str, history: History,
               epsilon_run: float, delta: float, accountant: str, limit: float) -> None:
        """Add one entry in the format written before spends were recorded (a cumulative
        ``history`` superseding the run's previous one), under the lock."""
        entry = {
            "run_id": int(run_id), "round": int(server_round), "status": status,
            "history": [[float(s), float(q), int(n)] for s, q, n in history],
            "epsilon_run": float(epsilon_run) if math.isfinite(epsilon_run) else None,
            "delta": float(delta), "accountant": accountant,
            "lifetime_limit": float(limit) if 0 < limit < math.inf else None,
        }
        with self._locked():
            self._append_locked(entry)

    def _append_locked(self, entry: dict[str, Any]) -> None:
        entry = {**entry, "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "previous": self.entries[-1]["hash"] if self.entries else GENESIS}
        entry["hash"] = _entry_hash(entry)
        atomic_write_json(self.path, {"format": FORMAT, "site": self.site,
                                      "entries": [*self.entries, entry]})
        self.entries.append(entry)

    # --- reporting -------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """One row per run: training rounds trained/refused and the run's training ε;
        test-set releases made/refused and the run's test ε; δ, accountant, times.

        A reserved round counts as trained: it was spent whether or not it finished. An
        exact test release makes the run's test ε infinite, as a round without DP its
        training ε."""
        rows: dict[int, dict[str, Any]] = {}
        for e in self.entries:
            r = rows.setdefault(e["run_id"], {
                "run_id": e["run_id"], "first_utc": e["time_utc"], "rounds_trained": 0,
                "rounds_refused": 0, "epsilon": 0.0, "test_releases": 0, "test_refused": 0,
                "test_epsilon": 0.0, "delta": e["delta"], "accountant": e["accountant"]})
            r["last_utc"] = e["time_utc"]
            prefix, spent = ("test_", ("released", "exact")) if budget_of(e) == TEST else (
                "", ("trained", "reserved", "no-dp"))
            if e["status"] in spent:
                r["test_releases" if prefix else "rounds_trained"] += 1
                r[prefix + "epsilon"] = (math.inf if e["status"] in UNBOUNDED.values()
                                         else e["epsilon_run"])
            elif e["status"] == "refused":
                r["test_refused" if prefix else "rounds_refused"] += 1
        return list(rows.values())
