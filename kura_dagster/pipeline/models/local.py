"""Offline default models: no network, no key, deterministic for a given seed. Nothing in them knows a data set.

* ``LocalSummaryModel`` (in ``local_summary``) finds each user message's request in the user's own words
  (template text the corpus repeats, pasted material, code and markup set aside) and summarises it in the
  third person: an English request without "I", "you" or "my" is quoted whole, any other is described by its
  key phrases (runs of words between stop words), never by a clause rewritten around the user's pronouns.
  Natural languages come from ``lingua-language-detector``, programming languages from code fences. Scores
  that nothing here measures (concern, frustration, assistant errors) stay ``None``.
* ``LocalEmbeddingModel`` (in ``local_embedding``): TF-IDF + LSA over the conversation's user turns and the
  start of the replies, fitted once per taxonomy build and stored as an artifact.
* ``LocalClusterNamingModel`` (in ``local_naming``) names a cluster by its distinctive topic phrases:
  class-based TF-IDF (as BERTopic does) over its members' key phrases against the other clusters, with
  diverse top terms; a meta cluster by the phrases its children share, against its siblings.

Shared text helpers (languages, stop words, key phrases, c-TF-IDF) are in ``local_text``.
"""

from kura_dagster.pipeline.models.local_embedding import LocalEmbeddingModel
from kura_dagster.pipeline.models.local_naming import LocalClusterNamingModel
from kura_dagster.pipeline.models.local_summary import (
    LocalSummaryModel,
    TemplateStats,
    choose_request,
    key_phrases,
    message_candidates,
)
from kura_dagster.pipeline.models.local_text import code_languages, detect_natural_languages, has_person_words

__all__ = [
    "LocalClusterNamingModel",
    "LocalEmbeddingModel",
    "LocalSummaryModel",
    "TemplateStats",
    "choose_request",
    "code_languages",
    "detect_natural_languages",
    "has_person_words",
    "key_phrases",
    "message_candidates",
]
