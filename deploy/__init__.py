"""Deployment: the FastAPI service (``deploy.api``) and, later, site set-up tooling."""
