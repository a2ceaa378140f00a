"""The signed links mailmag puts in mails, and how long each kind stays good.

Every link names the subscriber by their random token key, bound to one action. Confirmation
links last as long as a pending sign-up (``pending_days``), preference links
``preferences_link_days``, erasure links ``erase_link_hours``; unsubscribe links never
expire, as the law expects them to keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from subscriptions.errors import BadToken
from subscriptions.i18n import N_
from subscriptions.tokens import Action, LinkSigner


class Named(Protocol):
    """Whom a link names: a ``Subscriber``, or the few columns of one a fast path read."""

    @property
    def token_key(self) -> str: ...


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    base_url: str
    confirm_seconds: int
    preferences_seconds: int
    erase_seconds: int
    form_seconds: int


VERIFY_SECONDS = 7 * 86400  # a privacy request's verification link
DISCLOSURE_SECONDS = 14 * 86400  # the link to a disclosure bundle

PATHS = {
    Action.confirm: "/confirm/",
    Action.unsubscribe: "/u/",
    Action.preferences: "/preferences/",
    Action.erase: "/erase/",
}


class Links:
    def __init__(self, signer: LinkSigner, policy: LinkPolicy) -> None:
        self.signer = signer
        self.policy = policy
        self._max_age = {
            Action.confirm: policy.confirm_seconds,
            Action.unsubscribe: None,
            Action.preferences: policy.preferences_seconds,
            Action.erase: policy.erase_seconds,
            Action.form: policy.form_seconds,
            Action.verify: VERIFY_SECONDS,
            Action.disclosure: DISCLOSURE_SECONDS,
        }

    def token(self, action: Action, subscriber: Named, scope: str = "") -> str:
        return self.signer.make(action, subscriber.token_key, scope)

    def url(self, action: Action, subscriber: Named, scope: str = "", lang: str = "") -> str:
        query = f"?lang={lang}" if lang else ""
        token = self.token(action, subscriber, scope)
        return f"{self.policy.base_url.rstrip('/')}{PATHS[action]}{token}{query}"

    def max_age(self, action: Action) -> timedelta:
        seconds = self._max_age[action]
        return timedelta(seconds=seconds) if seconds is not None else timedelta.max

    def read(self, action: Action, token: str) -> tuple[str, str]:
        """(token key, scope) of a valid, unexpired token for ``action``; else ``BadToken``."""
        return self.signer.read(action, token, max_age=self._max_age[action])

    def form_token(self, nonce: str) -> str:
        return self.signer.make(Action.form, nonce)

    def read_form_token(self, token: str) -> str:
        nonce, scope = self.read(Action.form, token)
        if scope or not nonce:
            raise BadToken(N_("This link is not valid."))
        return nonce
