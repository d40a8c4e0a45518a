"""The site's ``flwr-clientapp``: Flower's ClientApp process, refusing unapproved code.

A SuperNode's SuperExec starts the command ``flwr-clientapp`` by name, from ``PATH``, for
every task. The site launcher (``medfl site supernode``) puts a shim of that name first
on ``PATH`` that runs this module. It is Flower's own ``flwr-clientapp`` with one change:
before the FAB the SuperLink sent is installed, and so before any of its code is
imported, its sha256 must be in the site's allow-list (``medfl.site.approval``) and match
the hash it was sent under. Otherwise the task fails with Flower's error reply (the
coordinator sees "not approved at this site") and nothing from the FAB is unpacked.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfl.site.approval import AppNotApproved, check_approved

#: the site's state folder (holding approved-apps.json), set by the site launcher
STATE_DIR_ENV = "MEDFL_SITE_STATE_DIR"
#: the Flower module whose names the guard wraps (flwr 1.42)
_RUNTIME = "flwr.supernode.runtime.run_clientapp"


def install_guard(state_dir: Path | None) -> None:
    """Wrap Flower's FAB installation in the ClientApp process with the allow-list check.

    ``state_dir`` None (the launcher set no allow-list) refuses every FAB.
    """
    runtime = importlib.import_module(_RUNTIME)
    pull: Callable[[Any], tuple[Any, Any, Any, Any]] = runtime.pull_task_input
    install: Callable[..., Any] = runtime.install_from_fab
    sent: dict[str, str] = {}

    def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
        message, context, run, fab = pull(client)
        sent["hash"] = str(fab.hash_str)
        return message, context, run, fab

    def install_from_fab(content: bytes, *args: Any, **kwargs: Any) -> Any:
        if state_dir is None:
            raise AppNotApproved("this site's ClientApp launcher has no allow-list "
                                 f"({STATE_DIR_ENV} unset): every app is refused")
        check_approved(state_dir, content, claimed_hash=sent.get("hash"))
        return install(content, *args, **kwargs)

    # run_clientapp calls both by their module-level names
    setattr(runtime, "pull_task_input", pull_task_input)  # noqa: B010
    setattr(runtime, "install_from_fab", install_from_fab)  # noqa: B010


def main() -> None:
    """Run Flower's ``flwr-clientapp`` with the guard installed (same arguments)."""
    state = os.environ.get(STATE_DIR_ENV)
    install_guard(Path(state) if state else None)
    from flwr.supernode.cli import flwr_clientapp

    flwr_clientapp()


if __name__ == "__main__":
    main()
