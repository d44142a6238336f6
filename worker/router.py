"""Routing a customer's free text to a lookup (contract §5 ``route``).

Each lookup may declare ``route: {keywords: [...], extract: {param: pattern}}``.
`route_text` picks the lookup a sentence is about, and its parameters:

- The text is *normalised*: Unicode NFKD, accents and other combining marks
  dropped, casefolded, apostrophes removed, every other character that is not
  a letter or digit (punctuation, emoji, ``#``) turned into a space. Keywords
  are normalised the same way, so ``¿Dónde está mi PEDIDO?`` holds ``pedido``.
- A keyword matches as a whole word or a whole phrase of words (``where is
  my`` never matches inside ``somewhere``). A keyword word of 4 letters or more
  also matches a text word of 4 letters or more within a typo
  (`rapidfuzz.fuzz.ratio` ≥ 85: ``ordr`` → ``order``, ``pedidio`` →
  ``pedido``); shorter words, and words with digits, only match exactly.
- Score of a lookup: each matching keyword counts 2 per word when exact, 1 per
  word when only within a typo; each of its ``extract`` parameters found in the
  text adds 1. A lookup with no matching keyword does not take part at all, so
  small talk (``hi``, ``thanks!``, ``👍``) routes nowhere. The highest score
  wins; two or more lookups sharing the highest score are *ambiguous*: nothing
  is routed and `Route.ambiguous` names them.
- Each ``extract`` pattern (RE2, linear time) runs on the original text, then,
  if it found nothing there, on the text *folded* (NFKD, accents dropped,
  casefolded, punctuation kept: ``１２３４５`` → ``12345``, ``Nº`` → ``no``);
  its first group is the value. ``sender`` (the customer's number) is the ``customer_phone``
  parameter, and wins over any number written in the text: a customer cannot
  ask about someone else's account by typing their number.
- A routed lookup's required parameters that neither the text nor the sender
  gave are listed in `Route.missing`; the caller answers with the lookup's
  ``invalid_input`` text instead of running it.

A config without any ``route`` block (the seed's) routes by names instead: each
lookup, and each source read no lookup shadows, is reached by the words of its
name, its parameters found by what they are called (`_implicit_candidates`).

Only the first `MAX_TEXT_CHARS` characters of a text are read. The keyword
index is built once per loaded `Tenant` and reused.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from worker.tenant import Tenant
from worker.words import MAX_TEXT_CHARS, fold, normalise

if TYPE_CHECKING:
    import re2

__all__ = ["MAX_TEXT_CHARS", "Route", "normalise", "route_text"]

#: a typo is tolerated between words this long or longer …
_FUZZY_MIN_LEN = 4
#: … when `fuzz.ratio` (0–100) is at least this
_FUZZY_CUTOFF = 85.0
_EXACT_WEIGHT = 2.0
_FUZZY_WEIGHT = 1.0
_EXTRACT_BONUS = 1.0


@dataclass(frozen=True)
class Route:
    """Where a customer's text goes."""

    query_type: str | None  # the lookup; None when nothing matched (or a tie)
    parameters: dict[str, str]  # extracted values (+ customer_phone from `sender`)
    missing: tuple[str, ...] = ()  # required params of the matched lookup the text lacks
    ambiguous: tuple[str, ...] = ()  # lookups that tied (query_type is None then)
    reasons: tuple[str, ...] = ()  # human-readable explanation, for --explain

    @property
    def routed(self) -> bool:
        return self.query_type is not None


# -- the per-tenant index ----------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    name: str
    keywords: tuple[tuple[str, ...], ...]  # each keyword as normalised words
    extract: tuple[tuple[str, re2._Regexp], ...]
    required: tuple[str, ...]


@dataclass(frozen=True)
class _Index:
    candidates: tuple[_Candidate, ...]
    #: every keyword word a typo may reach (long enough, no digits)
    fuzzy_vocab: tuple[str, ...]
    #: the exact words of all keywords: a text word among them is no typo
    words: frozenset[str] = field(default_factory=frozenset)


_lock = threading.Lock()
_indexes: dict[int, tuple[weakref.ref[Tenant], _Index]] = {}


def _index(tenant: Tenant) -> _Index:
    key = id(tenant)
    entry = _indexes.get(key)
    if entry is not None and entry[0]() is tenant:
        return entry[1]
    index = _build_index(tenant)
    with _lock:
        _indexes[key] = (weakref.ref(tenant, lambda _ref: _indexes.pop(key, None)), index)
    return index


def _build_index(tenant: Tenant) -> _Index:
    candidates = []
    for name, config in tenant.config.lookups.items():
        if config.route is None or name not in tenant.lookups:
            continue
        keywords = tuple(dict.fromkeys(tuple(normalise(k).split()) for k in config.route.keywords))
        extract = tuple((param, _compile(p)) for param, p in config.route.extract.items())
        params = tenant.lookups[name].params
        required = tuple(p for p, rule in params.items() if rule.required)
        candidates.append(_Candidate(name, tuple(k for k in keywords if k), extract, required))
    if not candidates:
        candidates = list(_implicit_candidates(tenant))
    words = frozenset(w for c in candidates for k in c.keywords for w in k)
    vocab = tuple(sorted(w for w in words if _fuzzy_able(w)))
    return _Index(tuple(candidates), vocab, words)


# -- implicit routes: a config with no `route` block at all (the seed's) --------

#: words of a read's name too general to route on by themselves
_GENERIC = frozenset({"check", "get", "find", "show", "list", "lookup", "query", "data", "info",
                      "details", "detail", "by", "of", "the", "for"})  # fmt: skip
#: a parameter's value, found in free text by what the parameter is called
_BY_NAME: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sku", "_sku", "_code", "code"),
     r"\b([A-Za-z]{1,8}-[A-Za-z0-9]{1,12}|[A-Za-z]{2,8}[0-9]{2,12})\b"),
    (("email", "_email"), r"([^\s@]+@[^\s@]+\.[A-Za-z]{2,})"),
    (("id", "_id", "number", "_number", "_no", "_num"), r"(?:^|[^A-Za-z0-9-])#?([0-9]{3,12})\b"),
)  # fmt: skip


def _implicit_candidates(tenant: Tenant) -> Iterable[_Candidate]:
    """Routes read from names: each lookup, and each source read no lookup shadows, is
    reached by its name's words (``order_status``: *order status*, *order*, *status*),
    with its parameters found by what they are called (``*_id``: a number, ``sku``: a
    code like ``SKU-789``, ``email``); ``customer_phone`` is the sender's number."""
    reads: dict[str, tuple[str, ...]] = {
        name: tuple(lookup.params) for name, lookup in tenant.lookups.items()
    }
    owners: dict[str, list[str]] = {}
    for source in tenant.sources.values():
        for name in source.queries:
            owners.setdefault(name, []).append(source.id)
    for name, sources in owners.items():
        if name in reads or len(sources) != 1:
            continue
        implicit = tenant.source_lookup(name, sources[0])
        if implicit is not None:
            reads[name] = tuple(implicit.params)
    for name, params in reads.items():
        words = tuple(normalise(name.replace("_", " ")).split())
        if not words:
            continue
        singles = [(w,) for w in words if len(w) >= _FUZZY_MIN_LEN and w not in _GENERIC]
        keywords = tuple(dict.fromkeys([words, *singles]))
        extract = tuple((p, _compile(pattern)) for p in params if (pattern := _by_name(p)))
        yield _Candidate(name, keywords, extract, params)


def _by_name(param: str) -> str | None:
    lowered = param.lower()
    if lowered in ("customer_phone", "phone"):
        return None  # the sender's number
    for suffixes, pattern in _BY_NAME:
        if any(lowered == s.lstrip("_") or lowered.endswith(s) for s in suffixes):
            return pattern
    return None


def _compile(pattern: str) -> re2._Regexp:
    import re2  # on the first routed text, as rapidfuzz

    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _fuzzy_able(word: str) -> bool:
    return len(word) >= _FUZZY_MIN_LEN and word.isalpha()


# -- routing -----------------------------------------------------------------


def route_text(tenant: Tenant, text: str, *, sender: str | None = None) -> Route:
    """The lookup a customer's ``text`` is about, with the parameters it gives."""
    index = _index(tenant)
    original = text[:MAX_TEXT_CHARS]
    folded = fold(original)
    normal = normalise(original)
    tokens = normal.split()
    typos = _typos(tokens, index)
    reasons = [f"normalised text: {normal!r}"]
    scored: list[tuple[float, _Candidate, dict[str, str]]] = []
    for candidate in index.candidates:
        score, why = _keyword_score(candidate, tokens, typos)
        if score == 0:
            reasons.append(f"{candidate.name}: 0 (no keyword)")
            continue
        found = _extract(candidate, original, folded)
        score += _EXTRACT_BONUS * len(found)
        why += [f"{p}={v!r} extracted (+{_EXTRACT_BONUS:g})" for p, v in found.items()]
        reasons.append(f"{candidate.name}: {score:g} ({'; '.join(why)})")
        scored.append((score, candidate, found))
    return _decide(scored, sender, reasons)


def _decide(
    scored: list[tuple[float, _Candidate, dict[str, str]]],
    sender: str | None,
    reasons: list[str],
) -> Route:
    sender_params = {"customer_phone": sender} if sender else {}
    if not scored:
        reasons.append("no lookup matches: no keyword of any lookup is in the text")
        return Route(None, sender_params, reasons=tuple(reasons))
    best = max(score for score, _, _ in scored)
    top = [(c, found) for score, c, found in scored if score == best]
    if len(top) > 1:
        names = tuple(sorted(c.name for c, _ in top))
        reasons.append(f"ambiguous: {', '.join(names)} tie at {best:g}")
        return Route(None, sender_params, ambiguous=names, reasons=tuple(reasons))
    candidate, found = top[0]
    parameters = {**found, **sender_params}
    missing = tuple(p for p in candidate.required if p not in parameters)
    reasons.append(f"routed to {candidate.name} (score {best:g})")
    if missing:
        reasons.append(f"missing required parameters: {', '.join(missing)}")
    return Route(candidate.name, parameters, missing=missing, reasons=tuple(reasons))


def _typos(tokens: Iterable[str], index: _Index) -> dict[str, frozenset[str]]:
    """For each text word that is no keyword, the keyword words it is a typo of."""
    typos: dict[str, frozenset[str]] = {}
    if not index.fuzzy_vocab:
        return typos
    # Imported on the first routed text: a worker that routes none never loads it.
    from rapidfuzz import fuzz, process

    for token in set(tokens):
        if token in index.words or not _fuzzy_able(token):
            continue
        hits = process.extract(
            token, index.fuzzy_vocab, scorer=fuzz.ratio, score_cutoff=_FUZZY_CUTOFF, limit=None
        )
        if hits:
            typos[token] = frozenset(hit[0] for hit in hits)
    return typos


def _keyword_score(
    candidate: _Candidate, tokens: list[str], typos: dict[str, frozenset[str]]
) -> tuple[float, list[str]]:
    score = 0.0
    why: list[str] = []
    for keyword in candidate.keywords:
        match = _find(keyword, tokens, typos)
        if match == "exact":
            score += _EXACT_WEIGHT * len(keyword)
            why.append(f"keyword {' '.join(keyword)!r} (+{_EXACT_WEIGHT * len(keyword):g})")
        elif match == "typo":
            score += _FUZZY_WEIGHT * len(keyword)
            why.append(
                f"keyword {' '.join(keyword)!r} within a typo (+{_FUZZY_WEIGHT * len(keyword):g})"
            )
    return score, why


def _find(keyword: tuple[str, ...], tokens: list[str], typos: dict[str, frozenset[str]]) -> str:
    """``exact``, ``typo`` or ``""``: how the keyword's words appear in a row in the text."""
    found = ""
    width = len(keyword)
    for start in range(len(tokens) - width + 1):
        exact = True
        for offset, word in enumerate(keyword):
            token = tokens[start + offset]
            if token == word:
                continue
            if word not in typos.get(token, ()):
                break
            exact = False
        else:
            if exact:
                return "exact"
            found = "typo"
    return found


def _extract(candidate: _Candidate, original: str, folded: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for param, pattern in candidate.extract:
        for text in (original, folded):
            match = pattern.search(text)
            value = match.group(1) if match is not None else None
            if value:
                found[param] = value
                break
    return found
