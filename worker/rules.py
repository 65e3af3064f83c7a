"""Rules: which table change means which invalidation or warming (pure code, no I/O).

A rule names a table, what kind of thing its rows are, and which columns hold the tenant and the
ids. ``Planner.plan_parts`` turns one ``ChangeEvent`` into actions, row by row: what can be planned
is, and each part that cannot (unknown table, missing tenant column, wrong types) is named in
``Planned.problems``; the listener parks such an event as a dead letter with those reasons.

Rules come from a TOML file (``SHARED_CACHE_WORKER_RULES_FILE``) or the defaults below::

    [[rule]]
    table = "documents"
    kind = "document"            # document | document_chunks | agent | collection | resource
    tenant_column = "tenant_id"
    id_column = "id"
    collection_column = "collection_id"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared_cache import (
    Scope,
    agent_scopes,
    collection_scopes,
    document_update_scopes,
    resource_scopes,
    validate_tenant_id,
)
from worker.events import ChangeEvent

RuleKind = Literal["document", "document_chunks", "agent", "collection", "resource"]

# Data types a rule's changes can make stale, per tenant: what a conservative invalidation bumps
# when a source may have lost changes of that table.
COVERED_TYPES: dict[str, tuple[str, ...]] = {
    "document": ("document", "embedding", "vector_store", "query_result", "retrieval_cache"),
    "document_chunks": ("embedding", "vector_store", "query_result", "retrieval_cache"),
    "agent": ("agent_config", "agent_response"),
    "collection": ("vector_store", "query_result", "retrieval_cache", "semantic_index"),
}


class PlanError(ValueError):
    """An event that cannot be planned; the reason is the message."""


class TableRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str = Field(min_length=1)
    schema_: str = Field("public", alias="schema")
    kind: RuleKind
    tenant_column: str = "tenant_id"
    id_column: str = "id"
    collection_column: str | None = "collection_id"
    document_column: str = "document_id"  # document_chunks: the document a chunk belongs to
    text_column: str | None = "content"  # document_chunks: the text to warm
    data_type: str | None = None  # resource: the cached data type the rows are

    def covered_types(self) -> tuple[str, ...]:
        if self.kind == "resource":
            return (self.data_type,) if self.data_type else ()
        return COVERED_TYPES[self.kind]


DEFAULT_RULES: tuple[TableRule, ...] = (
    TableRule(table="documents", kind="document"),
    TableRule(table="document_chunks", kind="document_chunks"),
    TableRule(table="agents", kind="agent"),
    TableRule(table="collections", kind="collection"),
)


def load_rules(path: str | Path | None = None) -> tuple[TableRule, ...]:
    """Rules from a TOML file (``[[rule]]`` tables), or the defaults when ``path`` is empty."""
    if not path:
        return DEFAULT_RULES
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    raw = data.get("rule")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected one or more [[rule]] tables")
    rules = tuple(TableRule.model_validate(item) for item in raw)
    for rule in rules:
        if rule.kind == "resource" and not rule.data_type:
            raise ValueError(f"{path}: rule for table {rule.table!r} of kind 'resource' needs data_type")
    return rules


@dataclass(frozen=True, slots=True)
class Invalidate:
    """Bump these scopes of one tenant (executed by the invalidation task, one round trip)."""

    tenant_id: str
    scopes: tuple[Scope, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Warm:
    """Embed and cache these texts for a tenant (executed by the warming task)."""

    tenant_id: str
    texts: tuple[str, ...]


Action = Invalidate | Warm


@dataclass(frozen=True, slots=True)
class Planned:
    """What one event plans (``actions``), and why each part that could not be planned was not."""

    actions: list[Action] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Planner:
    def __init__(self, rules: tuple[TableRule, ...] = DEFAULT_RULES) -> None:
        self.rules = {(rule.schema_, rule.table): rule for rule in rules}

    @property
    def tables(self) -> tuple[str, ...]:
        """Watched tables, qualified ``schema.table``."""
        return tuple(f"{schema}.{table}" for schema, table in self.rules)

    def rule_for(self, event: ChangeEvent) -> TableRule:
        rule = self.rules.get((event.schema_, event.table))
        if rule is None:
            raise PlanError(f"no rule for table {event.schema_}.{event.table}")
        return rule

    def plan_parts(self, event: ChangeEvent) -> Planned:
        """Plan each row of ``event`` on its own: an UPDATE whose new row is fine but whose old row
        lacks its tenant still invalidates for the new row. Never raises."""
        try:
            rule = self.rule_for(event)
        except PlanError as exc:
            return Planned([], [str(exc)])
        rows = [(name, row) for name, row in (("record", event.record), ("old_record", event.old_record)) if row]
        if not rows:
            return Planned([], [f"{event.type} on {event.table} carries no row"])
        actions: list[Action] = []
        problems: list[str] = []
        # An UPDATE that moves a row to another tenant, document or collection makes both sides stale.
        for name, row in rows:
            try:
                actions += _plan_row(rule, row, event)
            except PlanError as exc:
                problems.append(f"{name}: {exc}")
            except Exception as exc:  # a bug or a value nobody foresaw: this part is parked, not the listener
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
        return Planned(list(dict.fromkeys(actions)), problems)  # same action twice (old and new row alike) once

    def plan(self, event: ChangeEvent) -> list[Action]:
        """The actions of ``event``; ``PlanError`` if no part of it can be planned."""
        planned = self.plan_parts(event)
        if planned.problems and not planned.actions:
            raise PlanError("; ".join(planned.problems))
        return planned.actions

    def tenant_of(self, event: ChangeEvent) -> str | None:
        """The tenant an event names under its rule's tenant column, if any (for a gap of one tenant)."""
        rule = self.rules.get((event.schema_, event.table))
        if rule is None:
            return None
        tenants = {row.get(rule.tenant_column) for row in (event.record, event.old_record) if row} - {None}
        if len(tenants) != 1:
            return None
        tenant = tenants.pop()
        try:
            return validate_tenant_id(tenant) if isinstance(tenant, str) else None
        except ValueError:
            return None


def _column(row: dict[str, Any], name: str, table: str, required: bool = True) -> Any:
    value = row.get(name)
    if value is None:
        if required:
            raise PlanError(f"{table} row has no {name!r} column value")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PlanError(f"{table}.{name} must be a string or an integer, got {type(value).__name__}")
    return value


def _plan_row(rule: TableRule, row: dict[str, Any], event: ChangeEvent) -> list[Action]:
    table = rule.table
    tenant = _column(row, rule.tenant_column, table)
    if not isinstance(tenant, str):
        raise PlanError(f"{table}.{rule.tenant_column} must be a string tenant id, got {tenant!r}")
    try:
        if rule.kind == "document":
            coll = _column(row, rule.collection_column, table, False) if rule.collection_column else None
            scopes = document_update_scopes(tenant, _column(row, rule.id_column, table), coll)
            return [Invalidate(tenant, tuple(scopes), f"{table} {event.type}")]
        if rule.kind == "document_chunks":
            doc = _column(row, rule.document_column, table)
            scopes = resource_scopes(tenant, "embedding", doc)
            coll = _column(row, rule.collection_column, table, False) if rule.collection_column else None
            if coll is not None:
                scopes += collection_scopes(tenant, coll)[:1]  # its queries may have used the chunk
            actions: list[Action] = [Invalidate(tenant, tuple(scopes), f"{table} {event.type}")]
            text = row.get(rule.text_column) if rule.text_column else None
            if event.type != "DELETE" and row is event.record and isinstance(text, str) and text:
                actions.append(Warm(tenant, (text,)))
            return actions
        if rule.kind == "agent":
            scopes = agent_scopes(tenant, _column(row, rule.id_column, table))
            return [Invalidate(tenant, tuple(scopes), f"{table} {event.type}")]
        if rule.kind == "collection":
            scopes = collection_scopes(tenant, _column(row, rule.id_column, table))
            return [Invalidate(tenant, tuple(scopes), f"{table} {event.type}")]
        assert rule.data_type is not None
        scopes = resource_scopes(tenant, rule.data_type, _column(row, rule.id_column, table))
        return [Invalidate(tenant, tuple(scopes), f"{table} {event.type}")]
    except PlanError:
        raise
    except ValueError as exc:  # an id the cache refuses (InvalidKeyError) is a bad event, not a crash
        raise PlanError(f"{table}: {exc}") from exc
