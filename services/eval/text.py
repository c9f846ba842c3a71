"""Text handling for the offline groundedness check: claims, sentences and content words.

Rules for what counts as a claim (see `answer_claims`):
- fenced code blocks (``` or ~~~) and indented code are skipped: code is not a statement of fact;
- markdown headings and table rows are skipped (a row is not a sentence, and cannot be checked
  without its header); block-quote markers are removed; list items (``-``, ``*``, ``•``,
  ``1.``, ``1)``) are claims of their own, their markers removed;
- prose is split into sentences after ``.``, ``!`` or ``?`` followed by space and a capital,
  digit or quote, except after a known abbreviation (``e.g.``, ``Dr.``, ``U.S.``) or an initial;
  decimals (``3.5``) never split since no space follows the point;
- questions are not claims, and a sentence with fewer than `MIN_CONTENT_WORDS` content words
  ("Sure!", "Here it is.", "I don't know.") is a fragment, not a claim; a negation counts as a
  content word, so "It is not in Paris." is checked. Conversational fillers ("know", "sure",
  "sorry") are stopwords.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

MIN_CONTENT_WORDS = 2

_QUOTES = "\"'\u201c\u201d\u2018\u2019"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _words(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each either else
    few for from further had has have having he her here hers herself him himself his how i if
    in into is it its itself just let me more most my myself of off on once only or other our
    ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up upon us very was
    we were what when where which while who whom whose why will with would you your yours
    yourself yourselves may might must shall one ones s t
    know sure think help sorry please here yes okay ok
    """
)

NEGATIONS = _words(
    "not no never none nothing nobody neither nor cannot without n't isn't aren't wasn't "
    "weren't doesn't don't didn't won't wouldn't can't couldn't shouldn't hasn't haven't "
    "hadn't"
)

_ABBREVIATIONS = _words(
    "e.g i.e etc vs cf al approx fig no nos dr mr mrs ms prof sr jr st mt inc ltd co corp "
    "dept est jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.n"
)

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_TABLE_ROW = re.compile(r"^\s*\|")
_QUOTE_MARKER = re.compile(r"^\s*(?:>\s?)+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_SENTENCE_END = re.compile(rf"[.!?]+[{_QUOTES})\]]*\s+(?=[{_QUOTES}(\[]?[A-Z0-9])")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*%?|[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*%?")
_SUFFIXES = (
    ("ational", "ate"),
    ("ization", "ize"),
    ("ations", "ate"),
    ("ation", "ate"),
    ("ingly", ""),
    ("edly", ""),
    ("ments", ""),
    ("ment", ""),
    ("ness", ""),
    ("ings", ""),
    ("ing", ""),
    ("ies", "y"),
    ("ied", "y"),
    ("ers", ""),
    ("er", ""),
    ("ed", ""),
    ("es", ""),
    ("ly", ""),
    ("s", ""),
)


def normalize(text: str) -> str:
    """NFKC-fold and lower-case, with typographic quotes made plain."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return text.replace("\u2019", "'").replace("\u2018", "'")


def stem(word: str) -> str:
    """Strip one common English suffix, keeping a stem of at least three letters.

    Deliberately crude (no dictionary): "released"/"releases"/"release" all become "releas".
    """
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + replacement
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def canonical_number(token: str) -> str:
    """ "1,000" → "1000", "3.50" → "3.5", "40%" → "40": the same quantity reads the same."""
    digits = token.rstrip("%")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", digits):
        digits = digits.replace(",", "")
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return digits
    text = format(value.normalize(), "f")
    return text


def tokens(text: str) -> list[str]:
    """Normalised word and number tokens, in order."""
    return _TOKEN.findall(normalize(text))


def content_terms(text: str) -> list[str]:
    """Stemmed content words and canonical numbers: what a claim asserts, stopwords removed."""
    terms = []
    for token in tokens(text):
        if _NUMBER.fullmatch(token):
            terms.append(canonical_number(token))
            continue
        token = token.removesuffix("'s")
        if token not in STOPWORDS and token not in NEGATIONS and len(token) > 1:
            terms.append(stem(token))
    return terms


def numbers(text: str) -> set[str]:
    """The canonical numbers a text states; a claim's numbers must appear exactly."""
    return {canonical_number(t) for t in tokens(text) if _NUMBER.fullmatch(t)}


def entities(text: str) -> set[str]:
    """Stems of the names a sentence states: capitalised words other than its first word.

    Like numbers, a claim's names must appear in the context: "born in Vienna" is not backed by
    "born in Warsaw" however many other words match. A sentence's first word is left out (it is
    capitalised anyway), so a swapped subject in first place is not caught.
    """
    words = unicodedata.normalize("NFKC", text).split()
    found = set()
    for word in words[1:]:
        for token in _TOKEN.findall(word):
            if token[:1].isupper() and not _NUMBER.fullmatch(token):
                term = normalize(token).removesuffix("'s")
                if len(term) > 1 and term not in STOPWORDS and term not in NEGATIONS:
                    found.add(stem(term))
    return found


def is_negated(text: str) -> bool:
    """Whether the text carries a negation word (an odd count would be subtler; we do not try)."""
    normal = normalize(text)
    return any(t in NEGATIONS for t in tokens(normal)) or "n't" in normal


def split_sentences(paragraph: str) -> list[str]:
    """Split prose into sentences, not after abbreviations or initials."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        before = paragraph[start : match.start() + 1].split()
        last = before[-1].rstrip(".").casefold() if before else ""
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        sentences.append(paragraph[start : match.end()].strip())
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


def _is_indented_code(line: str, previous_blank: bool, in_indented: bool) -> bool:
    """Markdown's rule: indented after a blank line, and not a (nested) list item."""
    indented = line.startswith(("    ", "\t")) and bool(line.strip())
    return indented and (previous_blank or in_indented) and not _LIST_MARKER.match(line)


def _blocks(text: str) -> list[str]:
    """Prose paragraphs and list items, with code blocks, headings and tables dropped."""
    blocks: list[str] = []
    paragraph: list[str] = []
    in_fence = in_indented = False
    previous_blank = True

    def flush() -> None:
        if paragraph:
            blocks.append(" ".join(paragraph))
            paragraph.clear()

    for raw in text.splitlines():
        line = _QUOTE_MARKER.sub("", raw)
        blank = not line.strip()
        in_indented = _is_indented_code(line, previous_blank, in_indented) or (
            in_indented and blank
        )
        if _FENCE.match(line):
            in_fence = not in_fence
            flush()
        elif in_fence or in_indented or blank or _HEADING.match(line) or _TABLE_ROW.match(line):
            flush()
        elif marker := _LIST_MARKER.match(line):
            flush()
            paragraph.append(line[marker.end() :].strip())
        else:
            paragraph.append(line.strip())
        previous_blank = blank
    flush()
    return blocks


def answer_claims(answer: str) -> list[str]:
    """The answer's checkable claims: declarative sentences with enough content words."""
    claims = []
    for block in _blocks(answer):
        for sentence in split_sentences(block):
            if sentence.rstrip(_QUOTES + ")] ").endswith("?"):
                continue
            weight = len(content_terms(sentence)) + is_negated(sentence)
            if weight >= MIN_CONTENT_WORDS:
                claims.append(sentence)
    return claims
