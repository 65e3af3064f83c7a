"""A Supabase project's endpoints, derived from one URL, and its REST client (supabase-py).

A deployment names its project once (``SHARED_CACHE_WORKER_SUPABASE_URL``); the Realtime socket and
the REST API (PostgREST) are both derived from that, the way supabase-py derives them: a realtime URL
pasted by mistake (``wss://<ref>.supabase.co/realtime/v1``) still gives ``https://<ref>.supabase.co``
for the REST calls instead of a URL that fails on every call.

``supabase`` is imported only when a client is made: importing this module, the listener or the
tasks without Supabase configured never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tasks.support import mask_secrets, mask_url

if TYPE_CHECKING:
    from supabase import AsyncClient

_ENDPOINT_SUFFIXES = ("/realtime/v1/websocket", "/realtime/v1", "/rest/v1")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
EXPECTED = "a Supabase project URL such as https://<project>.supabase.co (or its realtime URL wss://.../realtime/v1)"


def project_url(url: str) -> str:
    """The project's base URL (``https://<ref>.supabase.co``, any path prefix of a self-hosted
    gateway kept) from the project URL or one of its endpoints; ``ValueError`` names what is wrong."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError:
        raise ValueError(f"expected {EXPECTED}, got {mask_url(text)!r}") from None
    if scheme not in _SCHEMES or not host:
        raise ValueError(f"expected {EXPECTED}, got {mask_url(text)!r}")
    if parts.query or parts.fragment:  # shown without them: a pasted URL may carry the key there
        shown = mask_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))
        raise ValueError(
            f"the Supabase URL must not carry a query or fragment (the key has a setting of its own), "
            f"got {shown!r} with one"
        )
    path = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if path.endswith(suffix):
            path = path.removesuffix(suffix)
            break
    else:
        if scheme in ("ws", "wss"):
            raise ValueError(f"a websocket URL must end with /realtime/v1, got {mask_url(text)!r}")
    return urlunsplit((_SCHEMES[scheme], parts.netloc, path, "", ""))


def realtime_url(url: str) -> str:
    """The Realtime endpoint (without ``/websocket``, which the client appends) of a project URL."""
    base = urlsplit(project_url(url))
    scheme = "wss" if base.scheme == "https" else "ws"
    return urlunsplit((scheme, base.netloc, f"{base.path}/realtime/v1", "", ""))


def rest_url(url: str) -> str:
    """The REST (PostgREST) endpoint of a project URL."""
    return f"{project_url(url)}/rest/v1"


def split_table(name: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (in ``public``) as ``(schema, table)``."""
    schema, dot, table = name.rpartition(".")
    if not table or (dot and not schema):
        raise ValueError(f"expected a table name (table or schema.table), got {name!r}")
    return (schema or "public", table)


async def connect(url: str, key: str, *, request_timeout: float = 10.0) -> AsyncClient:
    """A supabase-py async client for the project: no session, no token refresh (a service key is
    not a user), a bounded timeout for every REST call. Makes no request by itself."""
    if not key:
        raise ValueError("a Supabase key is needed (SHARED_CACHE_WORKER_SUPABASE_KEY: the service-role key)")
    import httpx
    from supabase import AsyncClient, AsyncClientOptions

    http = httpx.AsyncClient(timeout=request_timeout, follow_redirects=True)
    options = AsyncClientOptions(auto_refresh_token=False, persist_session=False, httpx_client=http)
    return AsyncClient(project_url(url), key, options)


def describe_api_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """One line for an error of a REST call: PostgREST's code and message, or the exception."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    text = f"{code}: {message}" if code and message else str(message or exc) or type(exc).__name__
    return mask_secrets(text, secrets)


async def close_client(client: AsyncClient) -> None:
    """Release the client's HTTP connections (supabase-py's client has no close of its own)."""
    if client.options.httpx_client is not None:
        await client.options.httpx_client.aclose()
