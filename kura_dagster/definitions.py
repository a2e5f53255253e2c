"""The standalone code location, configured from the environment (see README): one call of
:func:`kura_dagster.build_kura_defs`, with unprefixed asset keys (``conversations``, ``summaries`` …), group
``kura`` and the resource keys ``kura``, ``source`` and ``io_manager``, as before the factory existed.

    dagster asset materialize -m kura_dagster.definitions --select '*'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

import dagster as dg

from kura_dagster.factory import build_kura_defs, default_checkpoint_root


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number (default {default})") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip()
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


def checkpoint_dir_from_env() -> str:
    return default_checkpoint_root()


def _formats(env: Mapping[str, str]) -> list[str]:
    from kura_dagster.checkpoints.registry import FORMATS

    raw = env.get("KURA_CHECKPOINT_FORMATS", "jsonl")
    formats = [f.strip().lower() for f in raw.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats or len(set(formats)) != len(formats):
        raise ValueError(
            f"KURA_CHECKPOINT_FORMATS={raw!r}: "
            + (f"unknown format(s) {bad}" if bad else "repeated formats" if formats else "no format")
            + f"; give a comma-separated list of {', '.join(FORMATS)} in priority order, e.g. 'jsonl,parquet'"
        )
    return formats


def _parquet_compression(env: Mapping[str, str], formats: list[str]) -> Optional[str]:
    compression = (env.get("KURA_PARQUET_COMPRESSION") or "").strip().lower() or None
    if compression and "parquet" in formats:
        from kura_dagster.checkpoints.parquet import COMPRESSIONS

        if compression not in COMPRESSIONS:
            raise ValueError(f"KURA_PARQUET_COMPRESSION={compression!r} is not valid; choose from {', '.join(COMPRESSIONS)}")
    return compression


def build_definitions(environ: Optional[Mapping[str, str]] = None) -> dg.Definitions:
    """The Definitions of ``kura_dagster.definitions`` for an environment (``os.environ`` by default)."""
    from kura_dagster.automation import CRON_ENV, DEFAULT_CRON, EXECUTOR_ENV

    env = os.environ if environ is None else environ
    formats = _formats(env)
    return build_kura_defs(
        None,
        conversations=env.get("KURA_CONVERSATIONS") or None,
        formats=formats,
        save_strategy=_env_choice(env, "KURA_SAVE_STRATEGY", "all_enabled", ("all_enabled", "primary_only")),  # type: ignore[arg-type]
        load_strategy=_env_choice(env, "KURA_LOAD_STRATEGY", "first_found", ("first_found", "priority")),  # type: ignore[arg-type]
        llm=env.get("KURA_LLM") or "local",
        embeddings=env.get("KURA_EMBEDDINGS") or "local",
        max_concurrency=_env_int(env, "KURA_LLM_MAX_CONCURRENCY", 8),
        on_bad_record=_env_choice(env, "KURA_ON_BAD_RECORD", "fail", ("fail", "skip")),  # type: ignore[arg-type]
        partitions=_env_choice(env, "KURA_PARTITIONS", "none", ("none", "daily", "files")).replace("none", "") or None,  # type: ignore[arg-type]
        partition_start=env.get("KURA_PARTITION_START") or None,
        window_days=_env_int(env, "KURA_WINDOW_DAYS", 0, minimum=0) or None,
        schedule_cron=(env.get(CRON_ENV) or "").strip() or DEFAULT_CRON,
        executor=env.get(EXECUTOR_ENV) or "in_process",
        parquet_compression=_parquet_compression(env, formats),
        hf_hub_repo=env.get("KURA_HF_HUB_REPO") or None,
        hf_hub_token=dg.EnvVar("HF_TOKEN") if env.get("HF_TOKEN") else None,
    )


defs = build_definitions()
