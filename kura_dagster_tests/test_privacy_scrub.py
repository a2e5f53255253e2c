"""privacy.scrub: each type with true positives (several languages, inside code blocks) and false positives."""

from __future__ import annotations

from collections import Counter

import pytest

from kura_dagster.pipeline.privacy import scrub

# (text, expected text, expected counts): every expectation written by hand.
TRUE_POSITIVES = [
    ("Mail me at jane.doe+work@example.co.uk.", "Mail me at [EMAIL].", {"[EMAIL]": 1}),
    ("Schreib an jürgen.müller@beispiel.de bitte", "Schreib an [EMAIL] bitte", {"[EMAIL]": 1}),
    ("Call (415) 555-2671 tomorrow", "Call [PHONE] tomorrow", {"[PHONE]": 1}),
    ("Ruf mich an: 030 12345678", "Ruf mich an: [PHONE]", {"[PHONE]": 1}),
    ("Mon numéro: 06 12 34 56 78", "Mon numéro: [PHONE]", {"[PHONE]": 1}),
    ("Mi móvil es +34 612 34 56 78.", "Mi móvil es [PHONE].", {"[PHONE]": 1}),
    ("電話は03-1234-5678です", "電話は[PHONE]です", {"[PHONE]": 1}),
    ("手机 138 0013 8000", "手机 [PHONE]", {"[PHONE]": 1}),
    ("my number is 4155552671", "my number is [PHONE]", {"[PHONE]": 1}),
    ("card 4111 1111 1111 1111, amex 378282246310005", "card [CARD], amex [CARD]", {"[CARD]": 2}),
    ("Karte 5500-0000-0000-0004 abgelehnt", "Karte [CARD] abgelehnt", {"[CARD]": 1}),
    ("server 192.168.1.20 and 8.8.8.8", "server [IP] and [IP]", {"[IP]": 2}),
    ("The IP was 1.2.3.4 yesterday", "The IP was [IP] yesterday", {"[IP]": 1}),
    ("v6 2001:db8:85a3::8a2e:370:7334 and fe80::1", "v6 [IP] and [IP]", {"[IP]": 2}),
    ("reset at https://x.com/reset?token=abc123&uid=42 now", "reset at [URL] now", {"[URL]": 1}),
    ("db postgres://admin:s3cr3tPass@10.0.0.5:5432/db", "db [URL]", {"[URL]": 1}),
    ("AWS AKIAIOSFODNN7EXAMPLE ok", "AWS [SECRET] ok", {"[SECRET]": 1}),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "gh [SECRET]", {"[SECRET]": 1}),
    ("key sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789", "key [SECRET]", {"[SECRET]": 1}),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "Authorization: Bearer [SECRET]", {"[SECRET]": 1}),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "[SECRET]", {"[SECRET]": 1}),
    ('```python\napi_key = "f9a8b7c6d5e4f3a2b1c0"\nPHONE = "+44 20 7946 0958"\nDSN = "mysql://u:pw@db/x"\n```',
     '```python\napi_key = "[SECRET]"\nPHONE = "[PHONE]"\nDSN = "[URL]"\n```',
     {"[SECRET]": 1, "[PHONE]": 1, "[URL]": 1}),
]

# Text that looks like personal data but is not: it must come back unchanged.
FALSE_POSITIVES = [
    "upgrade to v1.2.3.4, or version 1.2.3.4; pip install foo==1.2.3.4",
    "localhost 127.0.0.1 and 0.0.0.0 and ::1",
    "dates 2024-01-15, 15/01/2024, 15.01.2024 and at 12:30:45",
    "Order 4155552671 shipped; invoice INV-2023-000123; ticket #100234567",
    "ISBN 978-3-16-148410-0 and 9780306406157",
    "an order 4111111111111112 that fails Luhn",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it",
    '```python\nsha = "3f786850e387550fdab836ed7e6dc881de23001b"\nmd5 = "d41d8cd98f00b204e9800998ecf8427e"\nx = 5551234567\n```',
    "```cpp\nstd::vector<int> v; a::b();\n```",
    "see https://docs.python.org/3/library/re.html.",
    "Die Versionsnummer 2.10.300.1 und Port 8080, PID 12345",
    "「バージョン 3.11」と 2023年4月1日",
]


@pytest.mark.parametrize("text,expected,counts", TRUE_POSITIVES)
def test_scrub_replaces_personal_data(text, expected, counts):
    assert scrub(text) == (expected, Counter(counts))


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_scrub_keeps_lookalikes(text):
    assert scrub(text) == (text, Counter())


def test_scrub_is_idempotent_and_handles_empty():
    once, counts = scrub("write to a@b.io or call +1 650-253-0000")
    assert (once, counts) == ("write to [EMAIL] or call [PHONE]", Counter({"[EMAIL]": 1, "[PHONE]": 1}))
    assert scrub(once) == (once, Counter())
    assert scrub("") == ("", Counter())
