"""``invalidate``: one generation bump at exactly one scope of one tenant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import click

from shared_cache import (
    CacheManager,
    InvalidKeyError,
    Scope,
    agent_scopes,
    collection_scopes,
    conversation_scopes,
    document_update_scopes,
    resource_scopes,
    tenant_scopes,
)

from .errors import BadInput
from .state import State


@dataclass(frozen=True)
class Target:
    """What one invalidation covers: the scopes bumped, in words, and the manager call that bumps them."""

    scopes: list[Scope]
    what: str
    apply: Callable[[CacheManager], Awaitable[object]]


def choose_target(
    tenant: str,
    data_type: str | None,
    resource: str | None,
    document: str | None,
    collection: str | None,
    agent: str | None,
    conversation: str | None,
    everything: bool,
) -> Target:
    """The one form given, with every id validated; a usage error if not exactly one is given."""
    forms = {
        "--type": data_type is not None,
        "--document": document is not None,
        "--collection": collection is not None and document is None,
        "--agent": agent is not None,
        "--conversation": conversation is not None,
        "--all": everything,
    }
    chosen = [name for name, given in forms.items() if given]
    if len(chosen) != 1:
        got = ", ".join(chosen) or "none"
        raise BadInput(
            f"give exactly one of --type, --document, --collection, --agent, --conversation, --all (got {got})"
        )
    if resource is not None and data_type is None:
        raise BadInput("--resource goes with --type")
    try:
        return _target(tenant, data_type, resource, document, collection, agent, conversation)
    except InvalidKeyError as exc:
        raise BadInput(str(exc)) from None


def _target(
    tenant: str,
    data_type: str | None,
    resource: str | None,
    document: str | None,
    collection: str | None,
    agent: str | None,
    conversation: str | None,
) -> Target:
    if data_type is not None:
        rid = "*" if resource is None else resource  # an empty --resource is an invalid id, not "all"
        return Target(
            resource_scopes(tenant, data_type, rid),
            f"{data_type} {rid}",
            lambda m: m.invalidate(tenant, data_type, rid),
        )
    if document is not None:
        scopes = document_update_scopes(tenant, document, collection)
        what = f"document {document}" + (f" of collection {collection}" if collection is not None else "")
        # What invalidate_document_update does, on this manager rather than the singleton.
        return Target(scopes, what, lambda m: m.invalidate_scopes(tenant, scopes, "document_update"))
    if collection is not None:
        return Target(
            collection_scopes(tenant, collection),
            f"collection {collection}",
            lambda m: m.invalidate_collection_complete(tenant, collection),
        )
    if agent is not None:
        return Target(
            agent_scopes(tenant, agent), f"agent {agent}", lambda m: m.invalidate_agent_complete(tenant, agent)
        )
    if conversation is not None:
        return Target(
            conversation_scopes(tenant, conversation),
            f"conversation {conversation}",
            lambda m: m.invalidate_conversation_complete(tenant, conversation),
        )
    return Target(tenant_scopes(tenant), "everything", lambda m: m.invalidate_tenant(tenant))


@click.command()
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--type", "data_type", default=None, help="A data type: every entry of it, or of --resource.")
@click.option("--resource", default=None, help="With --type: one resource, in every context (default '*').")
@click.option("--document", default=None, help="A document update (with --collection: its collection too).")
@click.option("--collection", default=None, help="Alone: everything cached under the collection.")
@click.option("--agent", default=None, help="Everything cached under the agent, and its agent_config.")
@click.option("--conversation", default=None, help="Everything cached under the conversation.")
@click.option("--all", "everything", is_flag=True, help="Everything of the tenant (asks, unless --yes).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --all.")
@click.pass_obj
def invalidate(
    state: State,
    tenant: str,
    data_type: str | None,
    resource: str | None,
    document: str | None,
    collection: str | None,
    agent: str | None,
    conversation: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """Invalidate at exactly one scope: --type [--resource], --document [--collection], --agent,
    --collection, --conversation or --all. One generation bump (one round trip), published to every
    process's memory tier. No other tenant is touched."""
    target = choose_target(tenant, data_type, resource, document, collection, agent, conversation, everything)
    if everything and not yes:
        click.confirm(f"Invalidate everything cached for tenant {tenant!r}?", abort=True, err=True)
    state.run(target.apply)
    shown = [list(scope) for scope in target.scopes]
    state.emit(
        {"tenant": tenant, "invalidated": target.what, "scopes": shown},
        f"invalidated {target.what} of tenant {tenant} (scopes: {'; '.join(' '.join(s) for s in shown)})",
    )
