"""Pinyin for Chinese names, for ``phonetic`` search: 马小明 → ``maxiaoming`` and ``mxm``.

A surname read differently from the same character in ordinary words (单 is Shan, not Dan)
takes its surname reading, for the family name or, when no family name is given, for the
name's first one or two characters.
"""

from __future__ import annotations

import functools
import re

from pypinyin import lazy_pinyin

#: Surnames whose reading differs from the character's most common one.
SURNAME_READINGS = {
    "万俟": ["mo", "qi"],
    "尉迟": ["yu", "chi"],
    "单": ["shan"],
    "曾": ["zeng"],
    "解": ["xie"],
    "仇": ["qiu"],
    "区": ["ou"],
    "朴": ["piao"],
    "查": ["zha"],
    "盖": ["ge"],
    "缪": ["miao"],
    "覃": ["qin"],
    "召": ["shao"],
    "乐": ["yue"],
    "种": ["chong"],
    "繁": ["po"],
    "员": ["yun"],
    "秘": ["bi"],
}
_SURNAMES_LONGEST_FIRST = sorted(SURNAME_READINGS, key=len, reverse=True)
#: CJK Unified Ideographs, Extension A, and Extensions B to F (rare characters some names
#: are written with); migration 0006 indexes the same range on PostgreSQL.
_HAN = re.compile(r"[\u3400-\u9fff\U00020000-\U0002fa1f]")
_NOT_LETTER = re.compile(r"[^a-z]")


def has_han(text: str) -> bool:
    return bool(_HAN.search(text))


def _syllables(text: str, family: str | None) -> list[str]:
    text = re.sub(r"[\s·•・]", "", text)
    surname = family if family and text.startswith(family) else None
    if surname is None:
        surname = next(
            (s for s in sorted(SURNAME_READINGS, key=len, reverse=True) if text.startswith(s)), None
        )
    if surname is not None and surname in SURNAME_READINGS:
        return SURNAME_READINGS[surname] + lazy_pinyin(text[len(surname) :], errors="ignore")
    return lazy_pinyin(text, errors="ignore")


@functools.lru_cache(maxsize=65536)
def name_keys(text: str, family: str | None = None) -> tuple[str, ...]:
    """The full pinyin and the initials of a Chinese name; () for a name without Han characters."""
    if not has_han(text):
        return ()
    syllables = [s.lower() for s in _syllables(text, family) if s]
    if not syllables:
        return ()
    return ("".join(syllables), "".join(s[0] for s in syllables))


def query_key(text: str) -> str:
    """What a typed query is compared with: ``Ma Xiaoming``, ``ma xiao ming`` → ``maxiaoming``."""
    if has_han(text):
        keys = name_keys(text)
        return keys[0] if keys else ""
    return _NOT_LETTER.sub("", text.lower())
