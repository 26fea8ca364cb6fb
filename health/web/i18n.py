"""Languages of the pages: Chinese (zh-CN) first, English second, from gettext catalogues.

Templates and page code write English message ids (``{{ _("Log in") }}``); the catalogues in
``locale/<lang>/LC_MESSAGES/messages.po`` translate them. The catalogues are compiled in
memory at start-up, so there is no build step and nothing to forget to compile. A person's
choice is kept in the ``lang`` cookie; without one the pages are in Chinese.
"""

from __future__ import annotations

import gettext
import io
from functools import cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from fastapi import Request

LOCALE_DIR = Path(__file__).parent / "locale"
#: Language tag (as in the HTML ``lang`` attribute and the cookie) -> catalogue folder.
LANGUAGES = {"zh-CN": "zh_CN", "en": "en"}
DEFAULT_LANGUAGE = "zh-CN"
LANGUAGE_COOKIE = "lang"


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The compiled catalogue of ``language`` (a key of :data:`LANGUAGES`)."""
    path = LOCALE_DIR / LANGUAGES[language] / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as source:
        catalog = read_po(source, locale=LANGUAGES[language])
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def language_of(request: Request) -> str:
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    return chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE


def gettext_for(request: Request) -> gettext.NullTranslations:
    return translations(language_of(request))
