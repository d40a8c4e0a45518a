"""Deployment tooling: keys and certificates, and a loopback federation of real processes."""
