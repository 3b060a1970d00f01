"""Persistence: models, workspace-scoped repositories, migrations."""
