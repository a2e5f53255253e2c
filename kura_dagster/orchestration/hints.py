"""Errors that say what to set, where the user sets it: a pipeline built by ``build_kura_defs`` takes keywords, a
``KuraPipelineComponent`` takes attributes in its ``defs.yaml``, and the standalone location
(``kura_dagster.definitions``) reads ``KURA_*`` variables. Each pipeline's ``source`` resource records which of
the three made it (``configured_by``), so a hint names the setting that applies there."""

from __future__ import annotations

from typing import Any, Literal, Optional

ConfiguredBy = Literal["build_kura_defs", "component", "environment"]

ENV_NAMES = {"on_bad_record": "KURA_ON_BAD_RECORD", "allow_empty": "KURA_ALLOW_EMPTY",
             "max_shrink": "KURA_MAX_SHRINK"}
"""The standalone location's variable for each setting a hint names."""


def _env_value(value: Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def _yaml_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def setting(configured_by: ConfiguredBy, name: str, value: Any) -> str:
    """How to set ``name`` to ``value`` where the pipeline is configured, e.g. ``on_bad_record="skip" in
    build_kura_defs(...)``, ``on_bad_record: skip under attributes: in the component's defs.yaml`` or
    ``KURA_ON_BAD_RECORD=skip (the standalone location's variable)``."""
    if configured_by == "environment" and ENV_NAMES.get(name):
        return f"{ENV_NAMES[name]}={_env_value(value)} (the standalone location's environment variable)"
    if configured_by == "component":
        return f"{name}: {_yaml_value(value)} under attributes: in the component's defs.yaml"
    return f"{name}={value!r} in build_kura_defs(...)"


def skip_hint(configured_by: ConfiguredBy) -> str:
    return f"Fix them, or set {setting(configured_by, 'on_bad_record', 'skip')} to skip and quarantine them."


CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"})
"""botocore's (S3) and google-auth's (GCS) "no credentials" exceptions, recognised by name (neither is a
dependency)."""


def credentials_error(exc: BaseException, url: str, configured_by: ConfiguredBy) -> Optional[RuntimeError]:
    """A clear error for an fsspec store that found no credentials (``None`` when ``exc`` is another error):
    the URL, the setting that chose it and what supplies credentials."""
    seen: Optional[BaseException] = exc
    while seen is not None and type(seen).__name__ not in CREDENTIAL_ERRORS:
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    where = {"environment": "KURA_CHECKPOINT_DIR (the standalone location's environment variable)",
             "component": "the component's checkpoint_dir attribute (default: KURA_CHECKPOINT_DIR/<key_prefix>)",
             "build_kura_defs": "build_kura_defs(checkpoint_dir=...) (default: KURA_CHECKPOINT_DIR/<key_prefix>)",
             }[configured_by]
    options = {"build_kura_defs": ['fs_options={"key": ..., "secret": ...} of build_kura_defs'],
               "component": ["fs_options: {key: ..., secret: ...} in the defs.yaml (better: the environment)"],
               "environment": []}[configured_by]
    if url.startswith(("gs://", "gcs://")):
        ways = ["GOOGLE_APPLICATION_CREDENTIALS (a service-account key file)",
                "`gcloud auth application-default login`"]
    else:
        ways = ["AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)",
                "AWS_PROFILE with ~/.aws/credentials", "an instance or pod role", *options]
    supply = ", ".join(ways[:-1]) + f" or {ways[-1]}"
    if not url.startswith(("gs://", "gcs://")):
        supply += "; AWS_ENDPOINT_URL points at MinIO or another S3-compatible server"
    return RuntimeError(
        f"{url}: no credentials for this storage ({type(seen).__name__}: {seen}). It is the checkpoint directory, "
        f"set by {where}. Supply credentials through {supply}."
    )
