"""A user's Dagster project, laid out the `dg` way, with two Kura pipelines added by `defs.yaml` files."""
