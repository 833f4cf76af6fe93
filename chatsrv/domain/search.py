"""Full-text search of messages, the pure part: the query language, the cursor, snippets.

Query language (docs/protocol.md, "Search"): words separated by spaces must all occur
(AND); `"two words"` is a phrase (the words next to each other, in that order); `word*` is a
prefix (at least two letters or digits before the `*`). Nothing else is syntax: `&`, `|`,
`!`, `-`, `NEAR(`, `:`, `(` and the like are ordinary characters, so no input can be a
syntax error in the database's own query language (the adapters quote every term, see
adapters/storage/search.py). A term without a single letter or digit is dropped; a query
left with no term is refused (Invalid).

Words are compared the way the indexes compare them: case-folded and with diacritics
removed ("Café" is found by "cafe", "CAFÉ" and "café").

The cursor is the (created_at, id) of the last result of a page, opaque to clients: results
are newest first, ties broken by id, so the next page is everything strictly after it in
that order.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import parse_id

MAX_QUERY_CHARS = 256
MAX_TERMS = 16  # a pasted paragraph is not a search; each term is one more index probe
MIN_PREFIX = 2  # "a*" would walk every word starting with a: not a prefix, the word "a"
SNIPPET_CHARS = 160  # about two lines in the web client's result list
SNIPPET_LEAD = 40  # characters of context kept before the first hit when cutting
ELLIPSIS = "\u2026"

# A word: a letter or digit, then letters, digits and combining marks (so "cafe\u0301",
# decomposed, is one word, as the indexes see it). Underscore is punctuation, as for them.
_WORD = re.compile(r"[^\W_](?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff"
                   r"\ufe20-\ufe2f])*")


@dataclass(frozen=True, slots=True)
class Term:
    """One thing that must occur: `text` as the user wrote it (no quotes, no `*`); a phrase
    when it came in quotes; a prefix when it ended in `*`."""

    text: str
    phrase: bool = False
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    terms: tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class SearchCursor:
    created_at: datetime
    message_id: str


def fold(text: str) -> str:
    """Lower case, without the diacritics that Unicode decomposes ("é" is "e" plus an
    accent): what SQLite's unicode61 tokenizer stores for a word. PostgreSQL's unaccent
    folds more ("ł" to "l", "ø" to "o", "æ" to "ae", "ß" to "ss")."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", bare.lower())


def words(text: str) -> list[str]:
    """The folded words of a text, in order."""
    return [fold(m.group()) for m in _WORD.finditer(text)]


def _has_word(text: str) -> bool:
    return _WORD.search(text) is not None


def parse_query(q: str) -> SearchQuery:
    """The query as terms. Raises Invalid (field `q`): empty, too long, no word at all, too
    many terms."""
    text = q.strip()
    if not text:
        raise Invalid("q is required", field="q")
    if len(text) > MAX_QUERY_CHARS:
        raise Invalid(f"q is longer than {MAX_QUERY_CHARS} characters", field="q")
    terms: list[Term] = []
    for chunk, quoted in _chunks(text):
        if quoted:
            if _has_word(chunk):
                terms.append(Term(" ".join(chunk.split()), phrase=True))
            continue
        prefix = chunk.endswith("*")
        bare = chunk.strip("*")
        if not _has_word(bare):
            continue
        # a prefix needs two letters or digits at the end of the chunk to stand on
        tail = _WORD.findall(bare)[-1]
        prefix = prefix and bare.endswith(tail) and len(tail) >= MIN_PREFIX
        terms.append(Term(bare, prefix=prefix))
    if not terms:
        raise Invalid("q has no word to search for (letters or digits)", field="q")
    if len(terms) > MAX_TERMS:
        raise Invalid(f"q has more than {MAX_TERMS} words or phrases", field="q")
    return SearchQuery(text=text, terms=tuple(dict.fromkeys(terms)))


def _chunks(text: str) -> Iterable[tuple[str, bool]]:
    """(chunk, quoted): quoted phrases, then the space-separated rest. An unclosed quote
    runs to the end."""
    parts = text.split('"')
    for i, part in enumerate(parts):
        if i % 2 == 1:
            yield part, True
        else:
            for chunk in part.split():
                yield chunk, False


# ---------------------------------------------------------------------------- matching


def _term_words(term: Term) -> list[str]:
    return words(term.text)


def matches(query: SearchQuery, content: str) -> bool:
    """Whether every term occurs in `content` (the in-memory index; the SQL indexes decide
    the same with their own tokenizers, which differ in corner cases: PostgreSQL keeps
    host names and e-mail addresses whole)."""
    have = words(content)
    return bool(have) and all(_occurs(_term_words(t), t.prefix, have) for t in query.terms)


def _occurs(seq: Sequence[str], prefix: bool, have: Sequence[str]) -> bool:
    n = len(seq)
    if n == 0:
        return True
    for start in range(len(have) - n + 1):
        window = have[start:start + n]
        if window[:-1] == list(seq[:-1]) and (
                window[-1].startswith(seq[-1]) if prefix else window[-1] == seq[-1]):
            return True
    return False


# ---------------------------------------------------------------------------- snippets


def snippet(query: SearchQuery, content: str, *, width: int = SNIPPET_CHARS) -> str:
    """HTML: the part of `content` around the first hit, escaped, each word that matches a
    term wrapped in `<mark>`…`</mark>`, an ellipsis where the content was cut. Only the
    marks are markup: everything from `content` is escaped (safe as innerHTML)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for term in query.terms:
        ws = _term_words(term)
        if term.prefix and ws:
            prefixes.append(ws[-1])
            ws = ws[:-1]
        exact.update(ws)
    hits = [m.span() for m in _WORD.finditer(content)
            if (w := fold(m.group())) in exact or any(w.startswith(p) for p in prefixes)]
    start, end = _window(content, hits[0][0] if hits else 0, width)
    out = [ELLIPSIS] if start > 0 else []
    at = start
    for a, b in hits:
        if a < start or b > end:
            continue
        out.append(html.escape(content[at:a]))
        out.append(f"<mark>{html.escape(content[a:b])}</mark>")
        at = b
    out.append(html.escape(content[at:end]))
    if end < len(content):
        out.append(ELLIPSIS)
    return "".join(out)


def _window(content: str, first_hit: int, width: int) -> tuple[int, int]:
    """[start, end) of at most `width` characters holding the first hit, cut at spaces
    where one is near (within 15 characters)."""
    if len(content) <= width:
        return 0, len(content)
    start = max(0, min(first_hit - SNIPPET_LEAD, len(content) - width))
    if start > 0:
        space = content.find(" ", start, min(start + 15, first_hit))
        if space != -1:
            start = space + 1
    end = min(len(content), start + width)
    if end < len(content):
        space = content.rfind(" ", max(start, end - 15), end)
        if space > first_hit:
            end = space
    return start, end


# ---------------------------------------------------------------------------- cursor


def encode_cursor(created_at: datetime, message_id: str) -> str:
    raw = f"{created_at.isoformat()}|{message_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> SearchCursor:
    """Raises Invalid (field `before`) for anything but a cursor this server handed out."""
    try:
        if len(value) > 200:
            raise ValueError
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        when, _, message_id = raw.partition("|")
        created_at = datetime.fromisoformat(when)
        if created_at.tzinfo is None:
            raise ValueError
        return SearchCursor(created_at=created_at, message_id=parse_id(message_id))
    except (ValueError, UnicodeDecodeError, binascii.Error, Invalid):
        raise Invalid("before must be a cursor from an earlier search (next_before)",
                      field="before") from None
