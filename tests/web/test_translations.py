"""Every message the pages can show has its Chinese translation, and no catalogue entry is
left over from a message that is gone."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

WEB = Path(__file__).resolve().parents[2] / "health" / "web"
METHODS = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
OPTIONS = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}


def used_messages() -> set[str]:
    return {
        message if isinstance(message, str) else message[0]
        for _file, _line, message, _comments, _context in extract_from_dir(
            str(WEB), METHODS, options_map=OPTIONS
        )
    }


def catalogue(language: str) -> dict[str, str]:
    with (WEB / "locale" / language / "LC_MESSAGES" / "messages.po").open("rb") as source:
        catalog = read_po(source)
    return {str(m.id): str(m.string) for m in catalog if m.id}


def test_every_message_is_translated_into_chinese() -> None:
    used = used_messages()
    assert len(used) > 20  # the extraction found the pages' messages
    chinese = catalogue("zh_CN")
    missing = sorted(m for m in used if not chinese.get(m))
    assert missing == []


def test_the_chinese_catalogue_holds_no_stale_messages() -> None:
    assert sorted(set(catalogue("zh_CN")) - used_messages()) == []


def test_no_message_is_in_the_chinese_catalogue_twice() -> None:
    """A second entry silently replaces the first when the catalogue is read, so a fix made
    to one of the two could be the one that is lost."""
    text = (WEB / "locale" / "zh_CN" / "LC_MESSAGES" / "messages.po").read_text()
    ids = re.findall(r'^msgid ((?:"(?:[^"\\]|\\.)*"\n)+)msgstr', text, re.M)
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert repeated == []
