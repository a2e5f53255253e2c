"""Privacy by construction (Clio): scrubbing personal data out of text, before it leaves the summaries stage.

``scrub(text)`` replaces e-mail addresses, phone numbers, payment-card numbers, IP addresses (v4 and v6), URLs that carry
a query string or credentials, and API keys / tokens by typed placeholders (``[EMAIL]``, ``[PHONE]``, ``[CARD]``,
``[IP]``, ``[URL]``, ``[SECRET]``) and returns the new text with a ``Counter`` of replacements per placeholder type.

Where a maintained library does the job it is used, and nothing here downloads a model:

* phone numbers: Google's libphonenumber (``phonenumbers.PhoneNumberMatcher``, ``Leniency.VALID``) over several
  regions, so that national formats of the main languages are found as well as ``+``-prefixed ones;
* card numbers: python-stdnum's Luhn check (``stdnum.luhn``) on 13-19 digit runs with a card-scheme prefix;
* IP addresses: the standard library's ``ipaddress`` validates each candidate (octets <= 255, real v6 syntax);
* API keys / tokens: the pattern plugins of Yelp's detect-secrets (AWS, GitHub, GitLab, Slack, Stripe, OpenAI, JWT,
  private keys, PyPI, npm, SendGrid, Twilio, Discord, Telegram, Mailchimp, Azure, Square, basic-auth URLs) plus its
  Base64 high-entropy plugin on quoted strings;
* URLs: ``urllib.parse.urlsplit`` decides whether a URL has a query or credentials.

Patterns written by hand only cover what those lack: the e-mail address pattern, the candidate runs fed to the
validators, newer key formats (``sk-proj-``/``sk-ant-``, ``hf_``, ``AIza``, ``github_pat_``, ``Bearer`` headers) and
``password = "..."``-style assignments.  False positives the tests pin down: version numbers (``v1.2.3.4``,
``==1.2.3.4``), dates, order and invoice numbers, ISBNs, hex hashes (git SHAs, MD5s) in code, C++ ``a::b``.

Loopback and unspecified addresses (``127.0.0.1``, ``::1``, ``0.0.0.0``, ``::``) are kept: they identify nobody and
are common in code.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import phonenumbers
from stdnum import luhn

from kura_dagster.types import Cluster, ConversationSummary, GeneratedCluster, GeneratedSummary

__all__ = ["PLACEHOLDERS", "PHONE_REGIONS", "ScrubbingNamer", "scrub", "scrub_counts", "scrub_metadata",
           "scrub_summaries", "scrubbing_summary_model"]

EMAIL, PHONE, CARD, IP, URL, SECRET = "[EMAIL]", "[PHONE]", "[CARD]", "[IP]", "[URL]", "[SECRET]"
PLACEHOLDERS = (EMAIL, PHONE, CARD, IP, URL, SECRET)

# Regions whose national formats are recognised (``+``-prefixed numbers are found whatever the region): the languages
# the pipeline meets most, across North America, Europe, Latin America and Asia.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "MX", "IN", "JP", "CN", "RU")

# Words that say "a phone number follows" in several languages: a bare, unformatted digit run (``4155552671``) is
# taken for a phone number only after one of them (otherwise order numbers and timestamps would go).
_PHONE_WORDS = re.compile(
    r"(?i)(phone|tel\b|tel\.|telephone|call|cell|mobile|sms|whatsapp|fax|number is|reach me|"
    r"telefon|handy|rufnummer|anrufen|téléphone|telephone|portable|appele[zr]|teléfono|telefono|móvil|movil|celular|"
    r"llam[ae]|cellulare|chiama|telefoonnummer|bel me|電話|电话|手机|携帯|телефон|звоните|номер)"
)

_EMAIL_RE = re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,}(?![\w-])")
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s<>\"'`)\]}]*[^\s<>\"'`)\]}.,;:!?]")
_IPV4_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w]|\.\d)")
_IPV6_RE = re.compile(r"(?<![\w:.])((?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?)(?![\w:])")
# A version number, not an address: "v1.2.3.4", "version 1.2.3.4", "==1.2.3.4", "@1.2.3.4".
_VERSION_BEFORE = re.compile(
    r"(?i)(?:\bv|\bver\.?\s*|version\s*|versión\s*|versão\s*|versione\s*|release\s*|build\s*|[=<>~^@]=?\s*)$"
)
_CARD_RE = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
_ANY_DIGIT = re.compile(r"\d")
_DIGIT_RUN = re.compile(r"\d[\d\s().\-/]{5,}\d")
_KEYWORD_SECRET_RE = re.compile(
    r"(?i)\b(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd|pwd|"
    r"client[_-]?secret|private[_-]?key)\b[\"']?\s*(?:=|:|=>)\s*[\"']([^\"'\s]{6,})[\"']"
)
_EXTRA_SECRET_RES = (
    re.compile(r"\bsk-(?:proj-|ant-(?:api\d\d-)?|svcacct-|live-)?[A-Za-z0-9_-]{20,}"),  # OpenAI / Anthropic keys
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),  # Google API key
    re.compile(r"\bxox[a-z]-[A-Za-z0-9-]{10,}"),  # Slack, any shape
    re.compile(r"(?i)(?<=\bbearer )[A-Za-z0-9._~+/-]{16,}=*"),  # Authorization: Bearer …
)


@lru_cache(maxsize=1)
def _secret_plugins() -> tuple:
    """detect-secrets' pattern plugins (built once; their regexes compile at class definition)."""
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.discord import DiscordBotTokenDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    # Left out on purpose: the hex high-entropy plugin (it takes git SHAs and MD5s in code for keys), Artifactory
    # (its "AP[0-9A-F]…" pattern takes capitalised words) and Keyword (its analysis needs a file type; the
    # assignment pattern above covers prose and code alike).
    pattern = [AWSKeyDetector(), AzureStorageKeyDetector(), BasicAuthDetector(), DiscordBotTokenDetector(),
               GitHubTokenDetector(), GitLabTokenDetector(), JwtTokenDetector(), MailchimpDetector(), NpmDetector(),
               OpenAIDetector(), PypiTokenDetector(), SendGridDetector(), SlackDetector(), SquareOAuthDetector(),
               StripeDetector(), TelegramBotTokenDetector(), TwilioKeyDetector()]
    return tuple(pattern), PrivateKeyDetector(), Base64HighEntropyString(limit=4.5)


_PRIVATE_KEY_BLOCK = re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY[A-Z ]*-----.*?(?:-----END[A-Z ]*PRIVATE KEY[A-Z ]*-----|\Z)",
                                re.DOTALL)


def _sub(pattern: re.Pattern, text: str, placeholder: str, counts: Counter, keep=None, group: int = 0) -> str:
    """Replace each match of ``pattern`` (or of its ``group``) that ``keep`` does not veto by ``placeholder``."""
    out, last, n = [], 0, 0
    for m in pattern.finditer(text):
        start, end = m.span(group)
        if start < last or (keep is not None and keep(m, text)):
            continue
        out.append(text[last:start])
        out.append(placeholder)
        last = end
        n += 1
    if not n:
        return text
    out.append(text[last:])
    counts[placeholder] += n
    return "".join(out)


def _replace_values(text: str, values: set[str], placeholder: str, counts: Counter) -> str:
    for value in sorted(values, key=len, reverse=True):  # longest first: a token that contains another goes whole
        n = text.count(value)
        if n:
            text = text.replace(value, placeholder)
            counts[placeholder] += n
    return text


# Every key or token the patterns know is a run of 16 or more token characters (or sits in a URL's credentials,
# or a private-key block): text without one is not scanned by the plugins (most summaries and names).
_MAYBE_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=.:]{16,}|PRIVATE KEY")


def _scrub_secrets(text: str, counts: Counter) -> str:
    quoted = ('"' in text or "'" in text) and ("=" in text or ":" in text)
    found: set[str] = {m.group(1) for m in _KEYWORD_SECRET_RE.finditer(text)} if quoted else set()
    if not _MAYBE_TOKEN.search(text):
        return _replace_values(text, found, SECRET, counts)
    text = _sub(_PRIVATE_KEY_BLOCK, text, SECRET, counts)
    pattern_plugins, _private, base64_entropy = _secret_plugins()
    # Their denylist regexes, not analyze_string: that yields a regex's first group, which for some is the token's
    # prefix ("ghp"); a long first group is the secret inside an assignment (AWS, basic auth, npm), else the match.
    for plugin in pattern_plugins:
        for regex in plugin.denylist:
            for m in regex.finditer(text):
                value = m.group(1) if regex.groups and len(m.group(1) or "") >= 8 else m.group(0)
                found.add(value.strip())
    # The entropy plugin yields every quoted Base64-alphabet string; keep those above its entropy limit (random).
    for value in base64_entropy.analyze_string(text):
        if len(value) >= 20 and base64_entropy.calculate_shannon_entropy(value) > base64_entropy.entropy_limit \
                and not re.fullmatch(r"[0-9a-fA-F]+", value) and re.search(r"\d", value):
            found.add(value)
    for rx in _EXTRA_SECRET_RES:
        found.update(m.group(0) for m in rx.finditer(text))
    return _replace_values(text, {v for v in found if v not in PLACEHOLDERS}, SECRET, counts)


def _keep_url(m: re.Match, text: str) -> bool:
    try:
        parts = urlsplit(m.group(0))
    except ValueError:  # e.g. an invalid IPv6 netloc: not a URL we can judge, so treat it as sensitive
        return False
    return not (parts.query or parts.username or parts.password)


def _keep_ipv4(m: re.Match, text: str) -> bool:
    try:
        address = ipaddress.IPv4Address(m.group(1))
    except ValueError:
        return True  # an octet above 255 or a leading zero: a version or a date, not an address
    if address.is_loopback or address.is_unspecified:
        return True
    return bool(_VERSION_BEFORE.search(text[max(0, m.start() - 12):m.start()]))


def _keep_ipv6(m: re.Match, text: str) -> bool:
    candidate = m.group(1)
    if not re.search(r"\d", candidate) or candidate.count(":") < 2:
        return True  # "std::map", "a::b", "12:30"
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return True
    return address.is_loopback or address.is_unspecified


_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|6(?:011|5|4[4-9]|22)|35|62|81)")


def _keep_card(m: re.Match, text: str) -> bool:
    digits = re.sub(r"[ -]", "", m.group(0))
    if not 13 <= len(digits) <= 19 or not _CARD_PREFIX.match(digits):
        return True
    return not luhn.is_valid(digits)


def _scrub_phones(text: str, counts: Counter) -> str:
    if not _DIGIT_RUN.search(text):
        return text
    spans: set[tuple[int, int]] = set()
    for region in PHONE_REGIONS:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            raw, start = match.raw_string, match.start
            international = raw.startswith("+") or raw.startswith("00")
            before = text[start - 1] if start else " "
            if not international and ((before.isascii() and before.isalnum()) or before in "-_/#.:"):
                continue  # part of a bigger token: "INV-2023-000123", "id:4155552671"
            formatted = bool(re.search(r"[\s().\-]", raw))
            if not international and not formatted and not _PHONE_WORDS.search(text[max(0, start - 40):start]):
                continue  # a bare digit run with no "phone" word before it: an order number, an id
            spans.add((start, match.end))
    if not spans:
        return text
    out, last = [], 0
    for start, end in sorted(spans):
        if start < last:
            continue
        out += [text[last:start], PHONE]
        last = end
        counts[PHONE] += 1
    out.append(text[last:])
    return "".join(out)


def scrub_counts(text: str, counts: Counter) -> str:
    """``scrub`` that adds to a caller's ``Counter`` (for scrubbing many fields into one tally)."""
    if not text:
        return text
    # URLs first, so that a URL's credentials or query go with the whole URL; then keys, which may sit in a kept URL.
    # (Cheap containment tests first: most text has no "://", "@" or digits, and skips those scans.)
    if "://" in text:
        text = _sub(_URL_RE, text, URL, counts, keep=_keep_url)
    text = _scrub_secrets(text, counts)
    if "@" in text:
        text = _sub(_EMAIL_RE, text, EMAIL, counts)
    if not _ANY_DIGIT.search(text):
        return text
    text = _sub(_CARD_RE, text, CARD, counts, keep=_keep_card)
    if "." in text:
        text = _sub(_IPV4_RE, text, IP, counts, keep=_keep_ipv4, group=1)
    if "::" in text or text.count(":") >= 2:
        text = _sub(_IPV6_RE, text, IP, counts, keep=_keep_ipv6, group=1)
    return _scrub_phones(text, counts)


def scrub(text: str) -> tuple[str, Counter]:
    """Return ``text`` with personal data replaced by typed placeholders, and the count of replacements per type."""
    counts: Counter = Counter()
    return scrub_counts(text, counts), counts


# --- scrubbing the stages' outputs ------------------------------------------------------------------------

SUMMARY_TEXT_FIELDS = ("summary", "request", "topic", "task")
"""The free-text fields of a summary (``assistant_errors``, a list of texts, is scrubbed too)."""


def scrub_summary(summary: Any, counts: Counter) -> Any:
    """The summary (a ``ConversationSummary`` or a model's ``GeneratedSummary``) with every free-text field
    scrubbed (a copy when something changed)."""
    update: dict = {}
    for name in SUMMARY_TEXT_FIELDS:
        value = getattr(summary, name, None)
        if isinstance(value, str) and value:
            new = scrub_counts(value, counts)
            if new != value:
                update[name] = new
    errors = summary.assistant_errors
    if errors:
        new_errors = [scrub_counts(e, counts) if isinstance(e, str) else e for e in errors]
        if new_errors != errors:
            update["assistant_errors"] = new_errors
    return summary.model_copy(update=update) if update else summary


def scrub_summaries(summaries: Sequence[ConversationSummary], counts: Counter) -> list[ConversationSummary]:
    return [scrub_summary(s, counts) for s in summaries]


def scrub_generated(gen: GeneratedCluster, counts: Counter) -> GeneratedCluster:
    name, summary, slug = (scrub_counts(gen.name, counts), scrub_counts(gen.summary, counts),
                           scrub_counts(gen.slug, counts))
    if (name, summary, slug) == (gen.name, gen.summary, gen.slug):
        return gen
    return GeneratedCluster(name=name, summary=summary, slug=slug)


class ScrubbingNamer:
    """A ``ClusterNamingModel`` whose names, descriptions and slugs are scrubbed before anyone sees them (the
    base clusters', and the meta clusters', which are named from their children's). ``counts`` tallies what was
    replaced; everything else (``identity``, ``counts`` of a cached model …) is the wrapped model's."""

    def __init__(self, inner: Any, counts: Counter | None = None) -> None:
        self.inner = inner
        self.scrubbed: Counter = counts if counts is not None else Counter()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def name_clusters(self, groups: Sequence[Sequence[ConversationSummary]]) -> list[GeneratedCluster]:
        return [scrub_generated(g, self.scrubbed) for g in self.inner.name_clusters(groups)]

    def name_meta_clusters(self, groups: Sequence[Sequence[Cluster]]) -> list[GeneratedCluster]:
        from kura_dagster.pipeline.thresholds import name_parents  # "Other requests" children are never named from

        return [scrub_generated(g, self.scrubbed) for g in name_parents(self.inner.name_meta_clusters, groups)]


def scrub_metadata(counts: Counter, prefix: str = "privacy/scrubbed") -> dict[str, int]:
    """``{"privacy/scrubbed/EMAIL": n, …}`` for every type (zeros included, so a clean run says so)."""
    return {f"{prefix}/{p.strip('[]')}": int(counts.get(p, 0)) for p in PLACEHOLDERS}


def _scrub_generated_summary(summary: GeneratedSummary, counts: Counter) -> GeneratedSummary:
    return scrub_summary(summary, counts)  # the same fields as a ConversationSummary's


class ScrubbingSummaryModel:
    """A summary model whose answers are scrubbed as they come back, before the answer cache stores them and
    before they are embedded: the cache under the checkpoint directory never holds personal data a model copied
    from the conversation, and a rerun from the cache embeds the same text as the first run. Its ``identity`` is
    the wrapped model's (the cache key): an entry cached before scrubbing existed is reused as it is (its
    embedding text is the one it had then) and scrubbed on the way out of the stage."""

    def __init__(self, inner: Any, counts: Counter | None = None) -> None:
        self.inner = inner
        self.scrubbed: Counter = counts if counts is not None else Counter()
        self.identity = inner.identity

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "summarise_streaming"):  # streaming only through StreamingScrubbingSummaryModel
            raise AttributeError(name)
        return getattr(self.inner, name)

    def summarise(self, conversations: Sequence[Any], progress: Any = None) -> list[GeneratedSummary]:
        return [_scrub_generated_summary(s, self.scrubbed) for s in self.inner.summarise(conversations, progress)]


class StreamingScrubbingSummaryModel(ScrubbingSummaryModel):
    """:class:`ScrubbingSummaryModel` of a streaming model: each answer is scrubbed before ``on_result`` sees it."""

    def summarise_streaming(self, conversations: Sequence[Any], on_result: Any, progress: Any = None
                            ) -> list[GeneratedSummary]:
        def scrubbed(i: int, summary: GeneratedSummary) -> None:
            on_result(i, _scrub_generated_summary(summary, Counter()))  # counted once, below

        out = self.inner.summarise_streaming(conversations, scrubbed if on_result is not None else None, progress)
        return [_scrub_generated_summary(s, self.scrubbed) for s in out]


def scrubbing_summary_model(model: Any, counts: Counter | None = None) -> ScrubbingSummaryModel:
    """``model`` with its answers scrubbed (streaming kept when the model streams)."""
    cls = StreamingScrubbingSummaryModel if hasattr(model, "summarise_streaming") else ScrubbingSummaryModel
    return cls(model, counts)
