"""The default Definitions, configured from the environment (see README).

    dagster asset materialize -m kura_dagster --select '*'
"""

from __future__ import annotations

import os

import dagster as dg

from kura_dagster.assets import kura_assets
from kura_dagster.automation import (
    build_conversations_sensor,
    build_stale_refresh_schedule,
    executor_from_env,
    kura_job,
)
from kura_dagster.checks import kura_checks
from kura_dagster.migration_job import checkpoint_jobs
from kura_dagster.resources import ConversationSource, KuraPipelineResource
from kura_dagster.versioning import with_settings_versions


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number (default {default})") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


def checkpoint_dir_from_env() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("KURA_CHECKPOINT_DIR", "checkpoints")))


def io_manager_from_env() -> dg.ConfigurableIOManager:
    """``KURA_CHECKPOINT_FORMATS`` (comma list in priority order of jsonl/parquet/hf, default jsonl): one format →
    that format's IO manager; several → a MultiIOManager with the formats side by side under KURA_CHECKPOINT_DIR
    (plus KURA_SAVE_STRATEGY, KURA_LOAD_STRATEGY, KURA_PARQUET_COMPRESSION, KURA_HF_HUB_REPO, HF_TOKEN)."""
    from kura_dagster.io_managers.multi import io_manager_from_env as from_env

    return from_env()


def build_definitions() -> dg.Definitions:
    checkpoint_dir = checkpoint_dir_from_env()
    defs = dg.Definitions(
        assets=kura_assets,
        asset_checks=kura_checks,
        schedules=[build_stale_refresh_schedule()],
        sensors=[build_conversations_sensor()],
        executor=executor_from_env(),
        jobs=[kura_job, *checkpoint_jobs],
        resources={
            "io_manager": io_manager_from_env(),
            "kura": KuraPipelineResource(
                checkpoint_dir=checkpoint_dir,
                llm=os.environ.get("KURA_LLM") or "local",
                embeddings=os.environ.get("KURA_EMBEDDINGS") or "local",
                max_concurrency=_env_int("KURA_LLM_MAX_CONCURRENCY", 8),
            ),
            "source": ConversationSource(
                path=os.environ.get("KURA_CONVERSATIONS") or None,
                on_bad_record=_env_choice("KURA_ON_BAD_RECORD", "fail", ("fail", "skip")),  # type: ignore[arg-type]
            ),
        },
    )
    return with_settings_versions(defs)  # the resources' settings become part of each asset's code_version


defs = build_definitions()
