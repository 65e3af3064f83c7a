"""Small helpers every part of the worker application shares: secret masking and retry backoff.

They live in ``tasks`` (the worker imports ``tasks``, never the other way), so the listener, the CLI,
the tasks and the embedding providers mask secrets and back off the same way.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_PARAMS = ("password", "pass", "passwd")
MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo, ``?password=``, or libpq ``password=``) replaced by ``***``."""
    if "://" not in url:
        return _DSN_PASSWORD.sub(rf"\1{MASK}", url)  # a libpq key=value DSN
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in _PASSWORD_PARAMS else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secrets_of(url: str) -> list[str]:
    """The password(s) in ``url``, as written and percent-decoded (a message may quote either)."""
    found: list[str] = []
    if "://" in url:
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
            if password:
                found += [password, unquote(password)]
            found += [v for k, v in parse_qsl(urlsplit(url).query) if k.lower() in _PASSWORD_PARAMS]
    else:
        found += [m.group(2).strip("'") for m in _DSN_PASSWORD.finditer(url)]
    return sorted({s for s in found if s}, key=len, reverse=True)  # longest first: no partial leftovers


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every given secret (API keys, passwords) replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


@dataclass
class Backoff:
    """Exponential backoff with "equal jitter": half of each step fixed, half random, so many clients
    retrying after one outage spread out, yet each still waits a growing minimum.

    ``next()`` returns the delay before the next attempt; ``reset()`` after a success.
    """

    first: float = 0.05
    cap: float = 5.0
    factor: float = 2.0
    jitter: bool = True
    attempt: int = field(default=0, init=False)

    def next(self) -> float:
        step = min(self.cap, self.first * self.factor**self.attempt)
        self.attempt += 1
        if not self.jitter:
            return step
        return step / 2 + random.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0
