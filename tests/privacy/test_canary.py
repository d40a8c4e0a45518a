"""Canary: a planted patient value and identifier never leave the site.

One VA patient's max heart rate is set to a value found nowhere else, and VA's data
folder carries a unique identifier (the UCI format has no identifier column, so the
identifier rides in the site's file path, which is what a careless log would leak). A
full federated run must not show either in any message, log line or file it writes.
"""

from __future__ import annotations

import logging
import struct

import numpy as np
from conftest import run_config
from flwr.app import Context, RecordDict

from bench.inprocess import InProcessGrid
from client.app import app as client_app
from medfl.data.heart import FEATURE_NAMES, HEART_SITES, data_dir, load_heart_site
from server.app import main

CANARY = 191.3779
IDENTIFIER = "MRN-Z9F27C1-canary"


def _needles(value: float) -> list[bytes]:
    return [f"{value}".encode(), f"{value:.3f}".encode(),
            struct.pack("<f", value), struct.pack("<d", value)]


def _plant(tmp_path):
    nodes = []
    for site in HEART_SITES:
        folder = tmp_path / (f"hospital-{site}-{IDENTIFIER}" if site == "va" else site)
        folder.mkdir()
        name = f"processed.{site}.data"
        text = (data_dir() / name).read_text()
        if site == "va":
            lines = text.splitlines()
            # the first row with no missing value among the 10 features is kept by the loader
            i = next(i for i, line in enumerate(lines) if "?" not in line.split(",")[:10])
            fields = lines[i].split(",")
            fields[7] = str(CANARY)  # thalach
            lines[i] = ",".join(fields)
            text = "\n".join(lines) + "\n"
        (folder / name).write_text(text)
        # a deployed site's policy that allows every release, so each one is checked here
        nodes.append({"site": site, "data-path": str(folder), "verify-checksum": False,
                      "site-dir": str(tmp_path / f"state-{site}"), "max-epsilon": 3.0,
                      "lifetime-epsilon": 10.0, "allow-personal-eval": True,
                      "allow-audit": True, "allow-exact-moments": True})
    return nodes


def _payload_bytes(msg) -> bytes:
    if msg.has_error():
        return msg.error.reason.encode()
    out = []
    for record in msg.content.values():
        for key, value in record.items():
            out.append(key.encode())
            out.append(value.data if hasattr(value, "data") else repr(value).encode())
    return b"\0".join(out)


def test_canary_value_and_identifier_never_leave_the_site(tmp_path, caplog):
    (tmp_path / "sites").mkdir()
    nodes = _plant(tmp_path / "sites")
    va = load_heart_site("va", directory=tmp_path / "sites" / f"hospital-va-{IDENTIFIER}",
                         verify=False)
    col = FEATURE_NAMES.index("thalach")
    planted = np.concatenate([va.x_train[:, col], va.x_test[:, col]])
    assert np.isclose(planted, CANARY).sum() == 1  # the canary is really in VA's data

    out = tmp_path / "out"
    cfg = run_config(num_server_rounds=2, output_dir=str(out), run_name="canary",
                     state_dir=str(tmp_path / "state"), evaluation__monitor_every=1)
    grid = InProcessGrid(client_app, cfg, node_configs=nodes)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("flwr").setLevel(logging.DEBUG)
    main(grid, Context(1, 0, {}, RecordDict(), cfg))

    assert (out / "canary" / "summary.json").is_file()
    needles = [*_needles(CANARY), IDENTIFIER.encode()]
    # feature moments, 2 x (train, evaluate), the audit and the report, at 4 sites
    assert len(grid.replies) == 4 * (1 + 2 * 2 + 1 + 1)
    for msg in [*grid.sent, *grid.replies]:
        blob = _payload_bytes(msg)
        assert not any(n in blob for n in needles), msg.metadata.message_type
    log_text = "\n".join(r.getMessage() for r in caplog.records).encode()
    assert log_text  # the run did log
    assert not any(n in log_text for n in needles)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 5
    for path in written:
        data = path.read_bytes()
        assert not any(n in data for n in needles), path.name
