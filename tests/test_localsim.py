"""Flower's local state and ports stay inside the checkout."""

from __future__ import annotations

from pathlib import Path

from medfl.localsim import base_port, flower_env, write_activate_hook


def test_ports_are_per_checkout_and_in_range():
    a, b = base_port(Path("/home/ann/medfl")), base_port(Path("/home/bob/medfl"))
    assert a != b
    for p in (a, b):
        assert 21000 <= p < 29000 and p % 2 == 0
    assert base_port(Path("/home/ann/medfl")) == a


def test_environment_keeps_flower_home_inside_and_disables_runtime_installs():
    env = flower_env(Path("/srv/medfl"), port=42000)
    assert env["FLWR_HOME"] == "/srv/medfl/.flwr"
    assert env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] == "42000"
    assert env["FLWR_LOCAL_CONTROL_API_PORT"] == "42001"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_activate_hook_is_written_once(tmp_path):
    activate = tmp_path / "activate"
    activate.write_text("# venv activate\n")
    write_activate_hook(activate, root=Path("/srv/medfl"))
    write_activate_hook(activate, root=Path("/srv/medfl"))
    text = activate.read_text()
    assert text.count('export FLWR_HOME="/srv/medfl/.flwr"') == 1
    assert text.startswith("# venv activate\n")


def test_free_port_pair_gives_two_bindable_loopback_ports():
    import socket

    from medfl.localsim import free_port_pair

    port = free_port_pair()
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", port))
        b.bind(("127.0.0.1", port + 1))


def test_free_port_never_gives_the_same_port_twice_in_a_process():
    """SuperNodes started together each take a free_port(); Linux can answer consecutive
    binds to port 0 with the same port, and two SuperNodes once got it (one then failed
    to bind its runtime API). Each call must give a port no earlier call gave."""
    import socket

    from medfl.deployment.processes import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # and the port is bindable
