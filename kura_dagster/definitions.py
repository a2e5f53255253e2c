"""The default Definitions, configured from the environment (see README).

    dagster asset materialize -m kura_dagster --select '*'
"""

from __future__ import annotations

import os

import dagster as dg

from kura_dagster.assets import kura_assets
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.resources import ConversationSource, KuraPipelineResource

FORMATS = ("jsonl",)


def checkpoint_dir_from_env() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("KURA_CHECKPOINT_DIR", "checkpoints")))


def io_manager_from_env() -> dg.ConfigurableIOManager:
    formats = [f.strip().lower() for f in os.environ.get("KURA_CHECKPOINT_FORMATS", "jsonl").split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"KURA_CHECKPOINT_FORMATS={os.environ.get('KURA_CHECKPOINT_FORMATS')!r}: "
                         f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    return JSONLIOManager(base_dir=checkpoint_dir_from_env())


def build_definitions() -> dg.Definitions:
    checkpoint_dir = checkpoint_dir_from_env()
    kura_job = dg.define_asset_job("kura_job", selection=dg.AssetSelection.groups("kura"),
                                   description="Materialize every Kura asset.")
    return dg.Definitions(
        assets=kura_assets,
        jobs=[kura_job],
        resources={
            "io_manager": io_manager_from_env(),
            "kura": KuraPipelineResource(checkpoint_dir=checkpoint_dir),
            "source": ConversationSource(
                path=os.environ.get("KURA_CONVERSATIONS") or None,
                on_bad_record=os.environ.get("KURA_ON_BAD_RECORD", "fail"),  # type: ignore[arg-type]
            ),
        },
    )


defs = build_definitions()
