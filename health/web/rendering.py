"""Rendering pages: one Jinja2 environment per language, autoescaped, with gettext installed.

Every page gets ``request``, the signed-in ``user`` (or None), the ``csrf_token`` its forms
carry, and the current and other language, so the base template can offer the switch.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from health.auth.gate import mask_csrf
from health.web.i18n import LANGUAGES, language_of, translations

TEMPLATES = Path(__file__).parent / "templates"


@cache
def environment(language: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(("html",)),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    return env


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    user: Any = None,
    csrf_token: str | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    language = language_of(request)
    page = environment(language).get_template(template)
    html = page.render(
        request=request,
        user=user,
        # Masked afresh for every page (see health.auth.gate.mask_csrf).
        csrf_token=mask_csrf(csrf_token) if csrf_token else None,
        lang=language,
        languages=list(LANGUAGES),
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=headers)
