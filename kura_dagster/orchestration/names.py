"""The names one Kura pipeline uses in a Dagster code location: asset keys, group, resource and IO-manager keys,
job, schedule and sensor names.

``KuraNames("support")`` namespaces everything under ``support`` (``support/summaries``, group ``support``,
resources ``support_kura``, ``support_source``, ``support_io_manager``, job ``support_job`` …), so several
pipelines merge into one ``Definitions`` without a collision and without touching the project's own
``io_manager``. ``KuraNames(None)`` is the standalone layout of ``kura_dagster.definitions``: unprefixed asset
keys, group ``kura`` and the resource keys ``kura``, ``source`` and ``io_manager`` (kept for compatibility).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

STAGES = ("conversations", "summaries", "clusters", "meta_clusters", "projected_clusters")
CHECKPOINT_NAMES = {
    "conversations": "conversations",
    "summaries": "summaries",
    "clusters": "clusters",
    "meta_clusters": "meta_clusters",
    "projected_clusters": "dimensionality",
}
"""Stage → Kura's checkpoint file name (Kura calls the projected clusters ``dimensionality``)."""

_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class KuraNames:
    prefix: Optional[str] = None

    def __post_init__(self) -> None:
        if self.prefix is not None and not _PREFIX.match(self.prefix):
            raise ValueError(
                f"key_prefix {self.prefix!r} is not a valid name: use letters, digits and underscores, starting "
                "with a letter (e.g. 'support' or 'sales_chats')"
            )

    @property
    def stem(self) -> str:
        """``support`` for a prefixed pipeline, ``kura`` for the standalone one."""
        return self.prefix or "kura"

    @property
    def group(self) -> str:
        return self.stem

    def key(self, stage: str):
        import dagster as dg

        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
        return dg.AssetKey([self.prefix, stage]) if self.prefix else dg.AssetKey(stage)

    def keys(self) -> list:
        return [self.key(s) for s in STAGES]

    def resource(self, role: str) -> str:
        """Resource key of ``kura`` (settings and models), ``source`` (conversations) or ``io_manager``."""
        if role not in ("kura", "source", "io_manager"):
            raise ValueError(f"unknown resource role {role!r}")
        return f"{self.prefix}_{role}" if self.prefix else role

    @property
    def kura(self) -> str:
        return self.resource("kura")

    @property
    def source(self) -> str:
        return self.resource("source")

    @property
    def io_manager(self) -> str:
        return self.resource("io_manager")

    def name(self, thing: str) -> str:
        """A job, schedule or sensor name: ``support_job``, ``kura_job`` for the standalone pipeline."""
        return f"{self.stem}_{thing}"
