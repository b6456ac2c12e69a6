"""Hydra configs shipped inside the package as ``metalearn_cli.configs`` (see pyproject.toml)."""
