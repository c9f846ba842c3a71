"""Finds personal data in free text, as the spans where it lies.

Two callers need the same answer to "is there an email, a phone number, a card number here?":
the `pii` validator flags a model's output that holds one (`validators.safety`), and the scrub
pass masks them in the datasets curated from traces (`services.eval.scrub`). So detection lives
here, once, as finders that yield (start, end) spans: a validator asks whether there is any, the
scrub pass replaces each.

Every pattern is linear-time: the text comes from users and their models, and a pattern that
backtracks would let one row stall the service. Patterns start with a character class, so `re`
skips ahead in C to where a match can begin; the neighbours of a candidate are checked in Python.

What each finder matches, and the look-alikes it keeps:

* `emails`: local@domain.tld with a letters-only TLD of 2 to 24 ("user@localhost" is kept).
* `phones`: a "+" and a country code, or groups of digits split by spaces, dots, dashes or
  parentheses; 10 to 15 digits in all. Not a bare run of digits (ids and timestamps), a date
  and time ("2024-01-15 10:30"), a list of years ("1999 2000 2001": groups of four digits alone),
  or a Luhn-valid 13+ digits (a card). A known gap: numbers split by nothing but spaces
  ("+1 415-555-0134 +1 415-555-0199") read as one candidate, which fails, so both are missed.
* `cards`: 13 to 19 digits, optionally grouped by single spaces or dashes, passing the Luhn
  check; not part of a longer number.
* `ssns`: ddd-dd-dddd alone (not inside a longer number, word or dash-joined id), except with an
  all-zero group, which is never issued (placeholders such as 000-00-0000). 9xx areas match
  too: they are ITINs, personal as well.
* `ips`: dotted-quad IPv4 (octets 0-255, no leading zeros) and IPv6 (validated by `ipaddress`;
  a zone id such as "%eth0" is left out), not part of a longer dotted or hex word. Addresses
  that name no host are kept: 0.0.0.0/8, loopback (127.0.0.0/8, ::1), multicast, reserved (which
  covers netmasks such as 255.255.255.0), "::" and IPv4-mapped IPv6 (whose IPv4 part is found
  on its own). Private addresses are matched. A version with four numeric parts ("1.2.3.4")
  cannot be told from an address and is matched; "v1.2.3.4", "1.2.3" and "1.2.3.4.5" are not.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

Span = tuple[int, int]

EMAIL = re.compile(r"[\w.%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b")
PHONE_CANDIDATE = re.compile(r"[+(\d][\d ().+-]{8,24}\d")
FOUR_DIGIT_GROUPS = re.compile(r"\d{4}(?:[ .-]\d{4})+")
PHONE_SHAPE = re.compile(
    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,5}|\+\d{10,15}"
)
CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?!\d)")
SSN = re.compile(r"\d(?<![\w-]\d)\d\d-\d\d-\d{4}(?![\w-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# The lookbehind and lookahead keep the quad whole: not a part of "1.2.3.4.5" or "v1.2.3.4".
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\w)")
# A run of hex digits, colons and dots (an embedded IPv4) that holds a colon; possessive, so
# each run is scanned once. `ipaddress` then decides.
IPV6_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*+(?!\w)")
# A first group that names a host: global unicast (2000::/3), unique local (fc00::/7), link- and
# site-local (fe80::/9). Any other (fewer than four digits included) is unspecified, loopback,
# IPv4-mapped (the IPv4 finder sees the address inside), multicast or reserved.
_IPV6_HOST_FIRST = re.compile(r"(?i:[23][0-9a-f]{3}|f[cd][0-9a-f]{2}|fe[89a-f][0-9a-f])")
_IPV6_MAX = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(char for char in text if "0" <= char <= "9")


def _isolated(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is not part of a longer word, number or timestamp."""
    before, after = text[start - 1 : start], text[end : end + 1]
    return not (before and (before.isalnum() or before in "+_")) and not (
        after and (after.isalnum() or after in "_:-")
    )


def emails(text: str) -> Iterator[Span]:
    if "@" not in text:
        return
    for match in EMAIL.finditer(text):
        start = match.start()
        # A longer local part than 64 characters: the match starts inside it.
        if not (start and (text[start - 1].isalnum() or text[start - 1] in "._%+-")):
            yield match.span()


def phones(text: str) -> Iterator[Span]:
    for match in PHONE_CANDIDATE.finditer(text):
        start, end = match.span()
        if not _isolated(text, start, end) or not PHONE_SHAPE.fullmatch(match.group()):
            continue
        if FOUR_DIGIT_GROUPS.fullmatch(match.group()):
            continue
        digits = _digits(match.group())
        if 10 <= len(digits) <= 15 and not (len(digits) >= 13 and luhn_valid(digits)):
            yield start, end


def cards(text: str) -> Iterator[Span]:
    for match in CARD.finditer(text):
        if luhn_valid(_digits(match.group())):
            yield match.span()


def ssns(text: str) -> Iterator[Span]:
    if "-" not in text:
        return
    for match in SSN.finditer(text):
        number = match.group()
        if number[:3] != "000" and number[4:6] != "00" and number[7:] != "0000":
            yield match.span()


def _ipv4_names_a_host(address: str) -> bool:
    # Not "this network" (0/8), loopback (127/8), multicast or reserved (224/4, 240/4: netmasks).
    first = int(address[: address.index(".")])
    return first not in (0, 127) and first < 224


def ips(text: str) -> Iterator[Span]:
    """IPv4 and IPv6 addresses, in order, none overlapping."""
    found: list[Span] = []
    if "." in text:
        for match in IPV4.finditer(text):
            if _ipv4_names_a_host(match.group()):
                found.append(match.span())
    if ":" in text:
        for match in IPV6_CANDIDATE.finditer(text):
            start, end = match.span()
            # Sentence punctuation after an address ("at fe80::1.", "fe80::1: down").
            while end > start and text[end - 1] == ".":
                end -= 1
            if end - start >= 2 and text[end - 1] == ":" and text[end - 2] != ":":
                end -= 1
            if end - start > _IPV6_MAX or text.count(":", start, end) < 2:
                continue
            # Whether it names a host is in its first group: checked before the costlier parse.
            if not _IPV6_HOST_FIRST.fullmatch(text, start, text.index(":", start)):
                continue
            try:
                ipaddress.IPv6Address(text[start:end])
            except ValueError:
                continue
            found.append((start, end))
    # An IPv6 address may end in an IPv4 one (2001:db8::10.0.0.1): one span for both.
    found.sort(key=lambda span: (span[0], -span[1]))
    end = -1
    for span in found:
        if span[0] >= end:
            yield span
            end = span[1]
