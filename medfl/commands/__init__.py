"""The ``medfl`` command line's commands, one module per concern.

``medfl.cli`` assembles them into one typer app; a command module never imports
``medfl.cli``, so any module (e.g. ``medfl.deployment.cli``) can reuse a command without
an import cycle.
"""

from __future__ import annotations
