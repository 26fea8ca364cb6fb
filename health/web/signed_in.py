"""The signed-in person of a page request, and how a page reads and writes records for them.

Every page that shows or changes records starts with :func:`signed_in`: the person's web
session (or a redirect to the login page), the caller whose access policy and audit trail the
page acts under, and helpers that run FHIR interactions through
``app.state.records.perform`` — so a page sees exactly what the person may see through the
API, and every look and write is on their audit trail. Pages never open a ResourceStore.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from health.auth.accounts import CHANGE_PASSWORD_PATH, User, WebSession
from health.auth.audit import account_event, append
from health.auth.gate import Gate, RequestCaller
from health.auth.passwords import MINIMUM_LENGTH, password_problem
from health.core.clock import utcnow
from health.web.i18n import gettext_for
from health.web.rendering import render
from records.api.service import RecordsContext, resources_of
from records.interactions import FhirRequest, FhirResult
from records.outcome import FhirError

Resource = dict[str, Any]


class PageRefused(Exception):
    """Ends a page request early with ``response`` (a login redirect, a refusal page)."""

    def __init__(self, response: Response) -> None:
        super().__init__("page refused")
        self.response = response


@dataclass
class SignedIn:
    request: Request
    web: WebSession
    caller: RequestCaller

    @property
    def user(self) -> User:
        return self.web.user

    @property
    def role(self) -> str:
        return self.web.user.role

    @property
    def csrf_token(self) -> str:
        return self.web.csrf_token

    @property
    def gate(self) -> Gate:
        gate: Gate = self.request.app.state.gate
        return gate

    async def record_account_change(
        self, session: AsyncSession, *, change: str, username: str, what: str
    ) -> None:
        """Put a change of a user account by this person on the audit trail, in ``session``'s
        transaction (the change and its record commit together)."""
        event = account_event(
            self.caller.actor, change=change, username=username, now=utcnow(), description=what
        )
        await append(session, self.gate.indexer, self.gate.audit.key, [event])

    # -- pages -----------------------------------------------------------------------------

    def gettext(self, message: str) -> str:
        return gettext_for(self.request).gettext(message)

    def password_message(self, password: str) -> str | None:
        """What is wrong with ``password`` as a new password, in the page's language."""
        if password_problem(password) is None:
            return None
        _ = self.gettext
        if password.isdigit() and len(password) >= MINIMUM_LENGTH:
            return _("The password must not be digits only.")
        return _("The password must have at least %(n)s characters.") % {"n": MINIMUM_LENGTH}

    def render(self, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        return render(
            self.request,
            template,
            status=status,
            user=self.user,
            csrf_token=self.csrf_token,
            **context,
        )

    def message(self, heading: str, text: str, *, status: int = 200, back: str = "/") -> Response:
        return self.render(
            "message.html",
            status=status,
            heading=heading,
            message=text,
            error=status >= 400,
            back=back,
        )

    def not_found(self, heading: str, text: str, back: str) -> PageRefused:
        """A 404 page to raise: what the person looked for is not there, or not theirs."""
        return PageRefused(self.message(heading, text, status=404, back=back))

    def forbidden(self, text: str) -> PageRefused:
        """A 403 page to raise: the page is not for this person, ``text`` says why."""
        return PageRefused(self.message(self.gettext("Not for your role"), text, status=403))

    def require_role(self, *roles: str) -> None:
        """Refuse the page (403) unless the person has one of ``roles``."""
        if self.role not in roles:
            raise self.forbidden(self.gettext("This page is for other roles than yours."))

    async def form(self) -> FormData:
        """The posted form, refused (403) unless it carries the session's CSRF token."""
        form = await self.request.form()
        if not Gate.csrf_matches(self.web, str(form.get("csrf_token") or "")):
            _ = self.gettext
            raise PageRefused(
                self.message(
                    _("The form has expired"), _("Reload the page and try again."), status=403
                )
            )
        return form

    # -- records ---------------------------------------------------------------------------

    @property
    def records(self) -> RecordsContext:
        records: RecordsContext = self.request.app.state.records
        return records

    async def perform(self, request: FhirRequest, *, return_resources: bool = False) -> FhirResult:
        return await self.records.perform(
            self.caller,
            request,
            base_url=self.records.fhir_base(self.request),
            return_resources=return_resources,
        )

    async def search(self, res_type: str, params: Iterable[tuple[str, str]]) -> list[Resource]:
        """The resources a search shows (matches and includes), or [] if the role may not
        search that type at all."""
        query = urlencode(list(params))
        try:
            result = await self.perform(FhirRequest("GET", res_type, query=query))
        except FhirError as error:
            if error.status == 403:
                return []
            raise
        return resources_of(result)

    async def search_bundle(self, res_type: str, params: Iterable[tuple[str, str]]) -> Resource:
        result = await self.perform(FhirRequest("GET", res_type, query=urlencode(list(params))))
        return result.body or {}

    async def read(self, res_type: str, res_id: str) -> Resource | None:
        """The resource, or None if it does not exist or is not the person's to see."""
        try:
            result = await self.perform(FhirRequest("GET", f"{res_type}/{res_id}"))
        except FhirError as error:
            if error.status in (400, 403, 404, 410):
                return None
            raise
        found = resources_of(result)
        return found[0] if found else None

    async def transaction(self, entries: list[Resource]) -> Resource:
        """POST a transaction Bundle of ``entries``; the response Bundle."""
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        result = await self.perform(FhirRequest("POST", "", body=bundle))
        return result.body or {}


def here(request: Request) -> str:
    """The request's path and query, to come back to after a login or a password change."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def page_session(request: Request) -> WebSession | None:
    """The page request's web session, if any. While her password is one an administrator
    set, PageRefused with a redirect to :data:`CHANGE_PASSWORD_PATH`: no page is hers until
    she has chosen her own."""
    gate: Gate = request.app.state.gate
    web = await gate.web_session(request)
    if web is not None and web.user.password_change_required:
        target = f"{CHANGE_PASSWORD_PATH}?{urlencode({'next': here(request)})}"
        raise PageRefused(RedirectResponse(target, status_code=303))
    return web


async def signed_in(request: Request) -> SignedIn:
    """The page's signed-in person; PageRefused with a login redirect if nobody is."""
    web = await page_session(request)
    if web is None:
        raise PageRefused(
            RedirectResponse(f"/login?{urlencode({'next': here(request)})}", status_code=303)
        )
    gate: Gate = request.app.state.gate
    return SignedIn(request, web, gate.web_caller(web, request))


def created_id(response_bundle: Resource, index: int) -> str | None:
    """The id a transaction's ``index``-th entry wrote, from its response ``location``."""
    entries = response_bundle.get("entry") or []
    if index >= len(entries):
        return None
    location = str((entries[index].get("response") or {}).get("location") or "")
    parts = location.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if parts else None


def field_errors(error: FhirError, fields: dict[str, str]) -> dict[str, str]:
    """The record service's refusal, as messages by form field.

    ``fields`` maps a fragment of an issue's FHIRPath expression (``birthDate``,
    ``identifier``) to the form field it came from; an issue that names none of them goes
    under ``""``, shown at the top of the form.
    """
    errors: dict[str, str] = {}
    for issue in error.issues:
        if issue.severity not in ("error", "fatal"):
            continue
        where = ""
        for expression in issue.expression:
            for fragment, name in fields.items():
                if fragment in expression:
                    where = name
                    break
            if where:
                break
        errors[where] = (errors[where] + " " if where in errors else "") + issue.diagnostics
    return errors
