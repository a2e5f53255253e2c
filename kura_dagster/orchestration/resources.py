"""Dagster resources: the pipeline settings and model backends, and where conversations come from.

Both are editable in the launchpad; the default Definitions fill them from the environment
(see README: KURA_CONVERSATIONS, KURA_ON_BAD_RECORD, KURA_CHECKPOINT_DIR …).
"""


import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Optional

import dagster as dg
from pydantic import Field

from kura_dagster.orchestration.hints import ConfiguredBy, skip_hint
from kura_dagster.pipeline.inputs import ReadResult
from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster.pipeline.models.base import ClusterNamingModel, EmbeddingModel, SummaryModel
from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel, LocalSummaryModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.types import Conversation

if TYPE_CHECKING:
    from kura_dagster.pipeline.models.openai import OpenAIConfig


def parse_backend(spec: str, what: str) -> Optional[str]:
    """``'local'`` → None, else the OpenAI backend's model name. The ``openai`` package (a second to import)
    is imported only when a pipeline uses it, so a run of the offline models never pays for it."""
    if (spec or "local").strip() == "local":
        return None
    from kura_dagster.pipeline.models.openai import parse_backend as parse_openai

    return parse_openai(spec, what)


class KuraPipelineResource(dg.ConfigurableResource):
    """Settings that shape every stage's output, and the model backends that do the work."""

    clusters_per_group: int = Field(10, description="Base clusters: k = ceil(n / clusters_per_group).")
    max_clusters: int = Field(10, description="Meta-clustering stops at this many root clusters.")
    seed: int = Field(0, description="Every stage is deterministic for a given seed.")
    embedding_dims: int = Field(256, description="Dimensions of the local embedding model.")
    llm: str = Field("local", description="'local' (offline) or 'openai:<model>' for an OpenAI-compatible server.")
    embeddings: str = Field("local", description="'local' (offline TF-IDF + LSA), 'openai:<model>', or "
                            "'sentence-transformers:<model name or local path>' (extra 'sentence-transformers').")
    refit_embedding: bool = Field(
        False, description="Fit the offline embedding's vocabulary and LSA reduction again at this summaries run "
        "(a taxonomy rebuild: rerun every summaries partition after it). Otherwise the stored fit is reused.")
    checkpoint_dir: str = Field("checkpoints", description="Where caches and quarantined records are kept.")
    # OpenAI-compatible backends. The API key is never config: the client reads OPENAI_API_KEY itself.
    base_url: Optional[str] = Field(
        None, description="OpenAI-compatible server, e.g. http://localhost:11434/v1; empty: OPENAI_BASE_URL or OpenAI."
    )
    max_concurrency: int = Field(8, description="Requests in flight at once (KURA_LLM_MAX_CONCURRENCY).")
    temperature: float = Field(0.2, description="Sampling temperature of the LLM (part of the summary cache key).")
    request_timeout: float = Field(120.0, description="Seconds per request before it is retried.")
    max_retries: int = Field(5, description="Retries of 429s, 5xx and timeouts, with exponential backoff.")
    structured_output: Literal["auto", "json_schema", "json_object"] = Field(
        "auto", description="'auto' tries JSON-schema structured output and falls back to JSON mode if refused."
    )
    embedding_batch_size: int = Field(64, description="Texts per embeddings request.")
    summary_batch_size: int = Field(
        0, description="Summaries saved to the cache per batch (a crash loses at most one); 0: 8 × max_concurrency."
    )
    # Privacy (Clio): see README "Privacy and facets".
    min_conversations: int = Field(
        10, description="A cluster is shown (named from its members) only with at least this many conversations."
    )
    min_users: int = Field(
        5, description="With user_key: a cluster is shown only with at least this many distinct users."
    )
    user_key: Optional[str] = Field(
        None, description="The conversation metadata field that names the user (e.g. user_id); empty: not counted."
    )
    privacy_audit: bool = Field(
        False, description="LLM mode: the model rates each cluster's name and description on Clio's 1-5 "
        "identifiability scale (5: identifies nobody) and clusters rated below audit_min_rating are withheld."
    )
    audit_min_rating: int = Field(3, description="The lowest privacy-audit rating a shown cluster may have (1-5).")
    # A taxonomy that stays put (README): incremental clusters, hierarchy and map between full builds.
    rename_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="A cluster's name and description are asked again only when this share "
        "of its members changed (added plus removed, over its size when named).")
    assign_quantile: float = Field(
        0.95, gt=0.0, le=1.0, description="A new conversation joins the nearest cluster when it is no farther from "
        "its centroid than this quantile of the cluster's own members' distances.")
    rebuild_new_share: float = Field(
        0.35, gt=0.0, le=1.0, description="Drift: rebuild the taxonomy when more than this share of the "
        "conversations sits in clusters made since the last build.")
    rebuild_far_share: float = Field(
        0.25, gt=0.0, le=1.0, description="Drift: rebuild the taxonomy when more than this share of the "
        "conversations is farther from its centroid than its cluster's radius.")
    rebuild_taxonomy: bool = Field(
        False, description="Rebuild the taxonomy from scratch at this run (base clusters, meta clusters and the "
        "map: new ids and names) instead of assigning new conversations to the clusters already known. A one-off "
        "request (the <prefix>_rebuild_taxonomy job sets it); it never marks assets stale or changes a cache key.")
    # What is new and growing (README): the cluster_growth table's check. Alert settings: they shape no output.
    growth_alert_factor: float = Field(
        3.0, gt=1.0, description="cluster_growth's check warns (severity WARN, not blocking) when a cluster's "
        "conversations in the latest period exceed this factor times its trailing average.")
    growth_window: int = Field(
        7, ge=1, description="The trailing average is over this many periods (days or partitions) before the latest "
        "one; periods without conversations count as 0.")
    growth_alert_min_conversations: int = Field(
        10, ge=1, description="The growth check ignores clusters with fewer conversations than this in the latest "
        "period (a jump from 1 to 4 is noise).")

    def settings(self) -> PipelineSettings:
        return PipelineSettings(
            clusters_per_group=self.clusters_per_group,
            max_clusters=self.max_clusters,
            seed=self.seed,
            embedding_dims=self.embedding_dims,
        )

    def thresholds(self) -> Any:
        """The aggregation thresholds (:class:`kura_dagster.pipeline.thresholds.Thresholds`)."""
        from kura_dagster.pipeline.thresholds import Thresholds

        return Thresholds(min_conversations=self.min_conversations, min_users=self.min_users,
                          user_key=(self.user_key or "").strip() or None)

    def openai_config(self, model: str) -> "OpenAIConfig":
        from kura_dagster.pipeline.models.openai import OpenAIConfig

        return OpenAIConfig(
            model=model, base_url=self.base_url or None, max_concurrency=self.max_concurrency,
            temperature=self.temperature, request_timeout=self.request_timeout, max_retries=self.max_retries,
            structured_output=self.structured_output,
        )

    def summary_model(self) -> SummaryModel:
        model = parse_backend(self.llm, "llm")
        if model is None:
            return LocalSummaryModel()
        from kura_dagster.pipeline.models.openai import OpenAISummaryModel

        return OpenAISummaryModel(self.openai_config(model))

    def embedding_model(self) -> EmbeddingModel:
        """The embedding backend. The offline one comes with the fit stored beside the checkpoints (see
        :meth:`fitted_embedding_model`); with none stored yet it fits itself on the first texts it embeds."""
        spec = (self.embeddings or "local").strip()
        if spec.partition(":")[0] in ("sentence-transformers", "sentence_transformers"):
            from kura_dagster.pipeline.models.sentence_transformers import SentenceTransformerEmbeddingModel

            return SentenceTransformerEmbeddingModel(spec.partition(":")[2].strip(),
                                                     batch_size=self.embedding_batch_size)
        model = parse_backend(self.embeddings, "embeddings")
        if model is None:
            from kura_dagster.checkpoints.artifacts import load_state
            from kura_dagster.pipeline.models.local_embedding import ARTIFACT_NAME

            local = LocalEmbeddingModel(dims=self.embedding_dims, seed=self.seed)
            stored = load_state(self.checkpoint_dir, ARTIFACT_NAME)
            return local.load(stored) if stored is not None and local.matches(stored) else local
        from kura_dagster.pipeline.models.openai import OpenAIEmbeddingModel

        return OpenAIEmbeddingModel(self.openai_config(model), batch_size=self.embedding_batch_size)

    def fitted_embedding_model(self, conversations: Sequence[Conversation],
                               template: Any = None) -> tuple[EmbeddingModel, str]:
        """``(model, how)``: :meth:`embedding_model`, and for the offline one the stored fit, or a new fit on
        ``conversations`` stored for later runs (``how``: ``loaded``, ``fitted``, ``refitted`` (``refit_embedding``)
        or ``replaced`` (the stored fit had other settings); ``remote`` for the other backends).
        :func:`refit_local_embedding` is the hook a taxonomy rebuild calls. ``template``: the corpus's template
        the summary model learnt from ``conversations`` already (a new fit then does not learn it again)."""
        if (self.embeddings or "local").strip() != "local":
            return self.embedding_model(), "remote"
        return fit_local_embedding(self.checkpoint_dir, conversations, dims=self.embedding_dims, seed=self.seed,
                                   refit=self.refit_embedding, template=template)

    def naming_model(self) -> ClusterNamingModel:
        model = parse_backend(self.llm, "llm")
        if model is None:
            return LocalClusterNamingModel(seed=self.seed)
        from kura_dagster.pipeline.models.openai import OpenAIClusterNamingModel

        return OpenAIClusterNamingModel(self.openai_config(model), seed=self.seed)

    def summary_batch(self) -> int:
        """Conversations per cached batch for an LLM backend."""
        return self.summary_batch_size if self.summary_batch_size > 0 else 8 * self.max_concurrency

    def identity(self) -> str:
        """Everything that shapes the outputs, for code versions and caches."""
        return (f"cpg={self.clusters_per_group}/max={self.max_clusters}/seed={self.seed}/dims={self.embedding_dims}"
                f"/llm={self.llm}/emb={self.embeddings}")


def fit_local_embedding(checkpoint_dir: str, conversations: Sequence[Conversation], *, dims: int = 256,
                        seed: int = 0, refit: bool = False, template: Any = None) -> tuple[LocalEmbeddingModel, str]:
    """The offline embedding with the fit stored under ``checkpoint_dir`` (``.kura-artifacts/local-embedding``),
    or fitted on ``conversations`` and stored when there is none (or it has other settings, or ``refit``)."""
    from kura_dagster.checkpoints.artifacts import load_or_fit
    from kura_dagster.pipeline.models.local_embedding import ARTIFACT_NAME

    local = LocalEmbeddingModel(dims=dims, seed=seed)
    state, how = load_or_fit(checkpoint_dir, ARTIFACT_NAME,
                             lambda: local.fit_conversations(conversations, template),  # template, vocabulary, LSA
                             matches=local.matches, refit=refit)
    return local.load(state), how


def refit_local_embedding(checkpoint_dir: str, conversations: Sequence[Conversation], *, dims: int = 256,
                          seed: int = 0) -> str:
    """Fit the offline embedding anew on ``conversations`` and store it as the current fit under
    ``checkpoint_dir``; returns its version. The hook for a "rebuild taxonomy" job: every summaries partition
    must be materialized again afterwards (their vectors were made with the previous fit)."""
    return fit_local_embedding(checkpoint_dir, conversations, dims=dims, seed=seed, refit=True)[0].state.version


DEMO_SOURCE = "built-in demo data"
"""The ``source`` of the demo set's ReadResult (its size is ``demo_size``; the input guard leaves it alone)."""


class ConversationSource(dg.ConfigurableResource):
    """Where the conversations come from: a path, glob, directory or fsspec URL (format detected from the
    content: Kura's dump or JSONL, a Claude.ai export, OpenAI-style chat records, Parquet, an HF dataset), the
    value of a project asset (see :meth:`from_value`), or the built-in demo set."""

    path: Optional[str] = Field(
        None, description="A file, glob, directory or fsspec URL (s3://, gs://, memory://); empty for the demo data."
    )
    column_map: dict[str, str] = Field(
        default_factory=dict, description="Kura field → source column, e.g. {chat_id: id, created_at: ts, messages: turns}."
    )
    format: Optional[str] = Field(None, description="Force a source format instead of detecting it from the content.")
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="'fail' stops with the first problems listed; 'skip' quarantines bad records."
    )
    demo_size: int = Field(320, description="How many demo conversations to generate when no path is set.")
    fs_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec storage options for path (credentials: prefer the environment)."
    )
    allow_empty: bool = Field(
        False, description="Accept a source with no conversations (it then replaces the checkpoints with empty "
        "ones). Off: an empty read fails and leaves the checkpoints as they were (KURA_ALLOW_EMPTY).",
    )
    max_shrink: float = Field(
        0.5, ge=0.0, le=1.0, description="The largest share by which a re-read may shrink against the last "
        "materialization (per partition) before the run fails, leaving the checkpoints as they were: 0.5 fails "
        "on fewer than half; 1 allows any shrink (KURA_MAX_SHRINK).",
    )
    configured_by: ConfiguredBy = Field(
        "build_kura_defs", description="Which configuration made this pipeline, so errors name the setting "
        "that applies: build_kura_defs (keywords), component (defs.yaml attributes) or environment (KURA_*).",
    )

    def location(self) -> Optional[str]:
        """``path`` with ``~`` expanded (URLs as they are); ``None`` for the demo data."""
        if not self.path:
            return None
        return self.path if "://" in self.path else os.path.expanduser(self.path)

    def read(self, location: Optional[str] = None) -> ReadResult:
        """Read the source, or one ``location`` of it (a day's file, one file partition) with the same options."""
        location = location or self.location()
        if location is None:
            return ReadResult(source=DEMO_SOURCE, conversations=demo_conversations(self.demo_size))
        from kura_dagster.sources import read_source

        return read_source(location, column_map=self.column_map or None, on_bad_record=self.on_bad_record,
                           storage_options=self.fs_options or None, format=self.format,
                           skip_hint=skip_hint(self.configured_by))

    def from_value(self, value: Any, source: str = "upstream asset") -> ReadResult:
        """Conversations from a project asset's value: ``list[Conversation]``, a list of dicts, a pyarrow Table,
        or a pandas or polars DataFrame, with ``column_map``."""
        from kura_dagster.sources import conversations_from_value

        return conversations_from_value(value, column_map=self.column_map or None, on_bad_record=self.on_bad_record,
                                        source=f"asset {source}", skip_hint=skip_hint(self.configured_by))
