"""The checkpoint formats the fault-injection tests cover: every ``registry.FORMATS`` entry whose module exists.

A format whose module has not been written yet is reported as a skip (with the reason); any other import
error is a real failure and is raised at collection.
"""

from __future__ import annotations

import pytest

from kura_dagster.checkpoints.registry import FORMATS, manager_class


def format_params() -> list:
    params = []
    for fmt, target in FORMATS.items():
        module = target.partition(":")[0]
        try:
            manager_class(fmt)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            params.append(pytest.param(fmt, marks=pytest.mark.skip(reason=f"{module} does not exist yet")))
            continue
        params.append(fmt)
    return params


def available_formats() -> list[str]:
    return [p for p in format_params() if isinstance(p, str)]
