"""The run's files served beside the model (``report.json``, ``MODEL_CARD.md``), checked
against the sha256 that the signed manifest records for them (``signed_files``, written
by ``medfl.serving.signing.sign_bundle``)."""

from __future__ import annotations

import hashlib
import logging

from medfl.errors import BundleError
from medfl.serving.bundle import MANIFEST, Bundle
from medfl.serving.signing import ATTACHMENTS

__all__ = ["served_attachments"]

logger = logging.getLogger(__name__)


def served_attachments(bundle: Bundle, *, signed_only: bool) -> dict[str, bytes]:
    """The run's ``report.json`` and ``MODEL_CARD.md`` to serve, read once, by name.

    A file listed in the manifest's ``signed_files`` must match its sha256, else
    ``BundleError``. With ``signed_only`` (a verification key is configured, so the listing
    is authenticated) a file not listed is withheld: a bundle signed before the reports
    were covered serves its model but not its report or card until it is signed again.
    Without it, unlisted files are served as they are (nothing is verified then).
    """
    listed = bundle.manifest.get("signed_files", {})
    if not isinstance(listed, dict):
        raise BundleError(f"{MANIFEST}: signed_files must map file names to sha256 digests")
    served = {}
    for name in ATTACHMENTS:
        path = bundle.path.parent / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if name in listed:
            if hashlib.sha256(data).hexdigest() != listed[name]:
                raise BundleError(f"{name} does not match the sha256 that the bundle's "
                                  f"manifest records for it: it was changed after the run "
                                  "was signed (rebuild it, or sign the run again with "
                                  "`medfl sign` if the change is yours)")
            served[name] = data
        elif signed_only:
            logger.warning("%s is not covered by the bundle's signature: not served", name)
        else:
            served[name] = data
    return served
