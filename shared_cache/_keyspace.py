"""Every Redis key and channel the system writes, spelled in one place (as arq keeps its prefixes).

Cache entries are built by :mod:`._keys` (the hierarchy); everything else, the library's and the
worker's bookkeeping, is named here. Per-tenant bookkeeping keys carry the tenant's ``{tenant}`` hash
tag, so on a Redis Cluster they live in the slot of the entries they describe and the scripts that
touch both stay legal; ``#`` right after the tag keeps them apart from entries, whose data type
always starts with a letter::

    {prefix}{tenant}:#gen[:kind:...]      generation counter of a scope (INCR: O(1) invalidation)
    {prefix}{tenant}:#lease:<entry>       short lease of the process fetching a missing entry
    {prefix}{tenant}:#perm                set of the tenant's entries written without expiry
    {prefix}{tenant}:#counter:<kind>:<id> a counter (hash: total and sub-totals)
    {prefix}{tenant}:#receipt:<id>        "this invalidation was applied" (written by the same script)
    {prefix}#stats:<origin>               a process's stats report (expires)
    {prefix}#worker:stats                 the listener's report (expires)
    {prefix}#worker:tenants               tenants the listener has seen (set)
"""

from __future__ import annotations

from dataclasses import dataclass

Scope = tuple[str, ...]
"""A generation scope, e.g. ``("t1", "coll", "=Y29sbA")``; the first element is always the tenant."""


def glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped, for ``SCAN MATCH`` patterns."""
    out = []
    for ch in text:
        if ch in "\\*?[]":
            out.append("\\")
        out.append(ch)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The key layout under one prefix (``CacheSettings.key_prefix``)."""

    prefix: str = "sc:"

    def tenant_tag(self, tenant_id: str) -> str:
        """``{prefix}{tenant}``: the start of every key of the tenant (its Cluster hash tag)."""
        return f"{self.prefix}{{{tenant_id}}}"

    def tenant_pattern(self, tenant_id: str) -> str:
        """SCAN pattern of every key of one tenant."""
        return glob_escape(self.tenant_tag(tenant_id)) + ":*"

    def entry_type(self, tenant_id: str, key: str | bytes) -> str | None:
        """The data type of one of the tenant's cache entries, or None for a bookkeeping key
        (generations, leases, counters, receipts, the permanent-entry set) or another tenant's key."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        tag = self.tenant_tag(tenant_id) + ":"
        if not text.startswith(tag) or text[len(tag) : len(tag) + 1] == "#":
            return None
        return text[len(tag) :].split(":", 1)[0]

    def generation(self, scope: Scope) -> str:
        """Generation counter of a scope."""
        tag = self.tenant_tag(scope[0])
        if len(scope) == 1:
            return f"{tag}:#gen"
        return f"{tag}:#gen:" + ":".join(scope[1:])

    def generations(self, scopes: tuple[Scope, ...]) -> tuple[str, ...]:
        """Generation counters of several scopes of one tenant (``scopes[0][0]``)."""
        if not scopes:
            return ()
        gen = f"{self.prefix}{{{scopes[0][0]}}}:#gen"
        return tuple([gen if len(scope) == 1 else gen + ":" + ":".join(scope[1:]) for scope in scopes])

    def lease(self, tenant_id: str, entry_key: str) -> str:
        """Lease of the process that fetches ``entry_key`` (an entry of the same tenant)."""
        tag = self.tenant_tag(tenant_id)
        return f"{tag}:#lease:" + entry_key[len(tag) + 1 :]

    def permanent(self, tenant_id: str) -> str:
        """Set of the tenant's entries written without expiry (``key\\ngen_key...`` members)."""
        return f"{self.tenant_tag(tenant_id)}:#perm"

    def counter(self, tenant_id: str, kind: str, resource: str) -> str:
        return f"{self.tenant_tag(tenant_id)}:#counter:{kind}:{resource}"

    def receipt(self, tenant_id: str, receipt: str) -> str:
        """Written, in the same script, by an invalidation that carries ``receipt``."""
        return f"{self.tenant_tag(tenant_id)}:#receipt:{receipt}"

    def stats(self, origin: str) -> str:
        """A process's stats report."""
        return f"{self.prefix}#stats:{origin}"

    def stats_pattern(self) -> str:
        return glob_escape(self.prefix) + "#stats:*"

    @property
    def worker_stats(self) -> str:
        """The running listener's report."""
        return f"{self.prefix}#worker:stats"

    @property
    def worker_tenants(self) -> str:
        """Tenants the listener has seen changes of (for conservative invalidations)."""
        return f"{self.prefix}#worker:tenants"

    @staticmethod
    def dead_letter_counts(dead_letter_key: str) -> str:
        """Per-source counts of the dead-letter list ``dead_letter_key`` (a worker setting)."""
        return f"{dead_letter_key}:counts"
