"""The standalone code location, configured from the environment (see README): one call of
:func:`kura_dagster.build_kura_defs`, with unprefixed asset keys (``conversations``, ``summaries`` …), group
``kura`` and the resource keys ``kura``, ``source`` and ``io_manager``, as before the factory existed.

    dagster asset materialize -m kura_dagster.definitions --select '*'
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Callable, Mapping
from typing import Optional

import dagster as dg

from kura_dagster.orchestration.factory import build_kura_defs


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


def _env_float(env: Mapping[str, str], name: str, default: float, *, kind: str, ok: Callable[[float], bool],
               rule: str) -> float:
    """A float variable: ``default`` when unset; an error naming the variable when it is not a number (``kind``
    says what number is meant) or fails ``ok`` (``rule`` says why)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number ({kind}; default {default})") from None
    if not ok(value):
        raise ValueError(f"{name}={raw!r} {rule}")
    return value


def _env_share(env: Mapping[str, str], name: str, default: float) -> float:
    return _env_float(env, name, default, kind="a share between 0 and 1", ok=lambda v: 0.0 <= v <= 1.0,
                      rule="must be a share between 0 and 1 (1 allows any shrink)")


def _env_factor(env: Mapping[str, str], name: str, default: float) -> float:
    return _env_float(env, name, default, kind="a factor above 1", ok=lambda v: v > 1.0,
                      rule="must be above 1 (a factor over the trailing average)")


def build_definitions(environ: Optional[Mapping[str, str]] = None) -> dg.Definitions:
    """The Definitions of ``kura_dagster.definitions`` for an environment (``os.environ`` by default)."""
    from kura_dagster.orchestration.automation import CRON_ENV, DEFAULT_CRON, executor_from_env

    from kura_dagster.io_managers.multi import io_manager_settings_from_env

    env = os.environ if environ is None else environ
    return build_kura_defs(
        None,
        conversations=env.get("KURA_CONVERSATIONS") or None,
        checkpoint_dir=env.get("KURA_CHECKPOINT_DIR") or "checkpoints",
        llm=env.get("KURA_LLM") or "local",
        embeddings=env.get("KURA_EMBEDDINGS") or "local",
        max_concurrency=_env_int(env, "KURA_LLM_MAX_CONCURRENCY", 8),
        # privacy (README "Privacy and facets")
        min_conversations=_env_int(env, "KURA_MIN_CONVERSATIONS", 10),
        min_users=_env_int(env, "KURA_MIN_USERS", 5),
        user_key=(env.get("KURA_USER_KEY") or "").strip() or None,
        privacy_audit=_env_choice(env, "KURA_PRIVACY_AUDIT", "0", ("0", "1", "false", "true")) in ("1", "true"),
        audit_min_rating=_env_int(env, "KURA_AUDIT_MIN_RATING", 3),
        # a taxonomy that stays put: 1 rebuilds at every run (else once, with the kura_rebuild_taxonomy job);
        # cluster_growth's check
        rebuild_taxonomy=_env_choice(env, "KURA_REBUILD_TAXONOMY", "0", ("0", "1", "false", "true")) in ("1", "true"),
        growth_alert_factor=_env_factor(env, "KURA_GROWTH_ALERT_FACTOR", 3.0),
        growth_window=_env_int(env, "KURA_GROWTH_WINDOW", 7),
        on_bad_record=_env_choice(env, "KURA_ON_BAD_RECORD", "fail", ("fail", "skip")),  # type: ignore[arg-type]
        allow_empty=_env_choice(env, "KURA_ALLOW_EMPTY", "0", ("0", "1", "false", "true")) in ("1", "true"),
        max_shrink=_env_share(env, "KURA_MAX_SHRINK", 0.5),
        configured_by="environment",
        partitions=_env_choice(env, "KURA_PARTITIONS", "none", ("none", "daily", "files")).replace("none", "") or None,  # type: ignore[arg-type]
        partition_start=env.get("KURA_PARTITION_START") or None,
        window_days=_env_int(env, "KURA_WINDOW_DAYS", 0, minimum=0) or None,
        schedule_cron=(env.get(CRON_ENV) or "").strip() or DEFAULT_CRON,
        executor=executor_from_env(env),  # a wrong value is an error naming KURA_EXECUTOR
        **io_manager_settings_from_env(env),
    )


def _skip_the_final_collection() -> None:
    """At exit, Python's last garbage collection walks every object still alive (Dagster, pydantic, scikit-learn,
    the run's data): ~1 s of a `dagster asset materialize` process after its run had ended. Freezing them moves
    them out of the collector's generations, so the process ends as soon as the run has; the atexit handlers
    (logging's flush among them), module teardown and reference-counted finalisers still run as before."""
    gc.freeze()


atexit.register(_skip_the_final_collection)  # registered after logging's own handler, so it runs before it

defs = build_definitions()
# What is alive now (Dagster, pydantic, the code location: ~1M objects that live as long as the process) is left
# out of the collector's full collections, which otherwise walk all of it again several times a run (7 full
# collections, 1.2 s, in an LLM run of 1,000 conversations). The usual practice for long-lived imports (see
# ``gc.freeze``); whatever of it is garbage already stays allocated, a one-off.
gc.freeze()
