"""Cache keys: validation, encoding of ids, the lookup hierarchy and generation scopes.

Pure code, no I/O. Layout (section 4.3 of the standard, with a Redis Cluster hash tag)::

    {prefix}{tenant}:data_type:agent:A:conv:C:coll:L:resource

Only the parts that are given appear. Every id goes through :func:`encode_id`, which keeps safe ids
readable and turns anything else (``:``, ``*``, braces, control characters, very long strings) into
an unambiguous encoded form, so no id can change which tenant or scope a key belongs to. Keys of the
library's own bookkeeping (generations, leases) are spelled by :class:`~._keyspace.Keyspace`; they put
``#`` right after the tenant tag, and a data type always starts with a letter, so the two never meet.

A plan is built on the first read of an identity in a process, so it is built with little work: the
hierarchy of each combination of given parts is computed once, at import.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from itertools import compress
from typing import NamedTuple

from ._keyspace import Keyspace, Scope
from .errors import InvalidKeyError

TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
DATA_TYPE_PATTERN = r"[a-z][a-z0-9_]{0,63}"
_tenant_ok = re.compile(TENANT_PATTERN).fullmatch
_data_type_ok = re.compile(DATA_TYPE_PATTERN).fullmatch
_safe_id = re.compile(r"[A-Za-z0-9_.@-]{1,100}").fullmatch
_MAX_ENCODED_ID_BYTES = 72  # longer ids are hashed so that keys stay bounded

# Scope kinds of a generation counter (ARCHITECTURE.md 3.1).
SCOPE_TENANT = "tenant"
SCOPE_TYPE = "type"
SCOPE_RESOURCE = "res"
SCOPE_AGENT = "agent"
SCOPE_CONVERSATION = "conv"
SCOPE_COLLECTION = "coll"
_PARTS = (SCOPE_AGENT, SCOPE_CONVERSATION, SCOPE_COLLECTION)


# Tenants and data types already validated (a process sees few of them; bounded anyway).
_valid_tenants: set[str] = set()
_valid_types: set[str] = set()
_VALID_MAX = 10_000


def validate_tenant(tenant_id: object) -> str:
    if type(tenant_id) is not str or (tenant_id not in _valid_tenants and not _tenant_ok(tenant_id)):
        raise InvalidKeyError(f"invalid tenant_id {tenant_id!r}: expected a string matching {TENANT_PATTERN}")
    if len(_valid_tenants) >= _VALID_MAX:
        _valid_tenants.clear()
    _valid_tenants.add(tenant_id)
    return tenant_id


def validate_data_type(data_type: object) -> str:
    if type(data_type) is not str or (data_type not in _valid_types and not _data_type_ok(data_type)):
        raise InvalidKeyError(f"invalid data_type {data_type!r}: expected a string matching {DATA_TYPE_PATTERN}")
    if len(_valid_types) >= _VALID_MAX:
        _valid_types.clear()
    _valid_types.add(data_type)
    return data_type


def check_id(value: object, what: str = "resource_id") -> None:
    """Refuse an id that is not a ``str``, an ``int`` or a ``UUID`` (``True``, ``1.0``, lists...).

    Called before any cache is consulted: ``True`` and ``1.0`` compare equal to ``1`` and would
    otherwise find what was cached for ``1``.
    """
    kind = type(value)
    if kind is not str and kind is not int and kind is not uuid.UUID:
        raise InvalidKeyError(f"invalid {what} {value!r}: expected a non-empty str, int or UUID")


def encode_id(value: object, what: str = "resource_id") -> str:
    """Encode one id (resource, agent, conversation, collection) as a key component.

    Safe ids (``[A-Za-z0-9_.@-]``, up to 100 characters) stay as they are. Others become ``=`` plus
    unpadded base64url of their UTF-8 bytes, or ``~`` plus a 128-bit BLAKE2b digest when long. ``=``
    and ``~`` never occur in a safe id, so the mapping is injective (up to hash collisions).
    """
    if type(value) is str:
        if _safe_id(value):
            return value
        text: str = value
    else:
        check_id(value, what)
        text = str(value)
        if _safe_id(text):
            return text
    if not text:
        raise InvalidKeyError(f"invalid {what} {value!r}: expected a non-empty str, int or UUID")
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= _MAX_ENCODED_ID_BYTES:
        return "=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return "~" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def text_digest(text: str, head: bytes = b"") -> str:
    """Bounded, id-safe digest of a long text (embedding and query keys), after ``head`` (an encoded
    prefix, for callers that digest many texts after the same one: UTF-8 of a concatenation is the
    concatenation of the encodings, lone surrogates included)."""
    return hashlib.blake2b(head + text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class KeyPlan(NamedTuple):
    """Everything the read and write paths need for one request identity, computed once.

    ``entry_keys`` are the hierarchy's keys, most specific first (writes go to ``entry_keys[0]``).
    ``gen_keys`` are the generation counters of the request's scopes, in the order tenant, type,
    resource, then agent, conversation, collection where given. ``level_gens[i]`` lists (0-based)
    which of them tag an entry at level ``i``. ``scopes`` are the same scopes as tuples, for the
    memory tier. ``mget_keys`` is what one lookup reads: entries, generations, then the lease;
    ``lookup_args`` the level count and, six characters a level, its counters as 1-based digits
    padded with "0" (lookup.lua).
    """

    tenant_id: str
    data_type: str
    entry_keys: tuple[str, ...]
    level_names: tuple[str, ...]
    level_gens: tuple[tuple[int, ...], ...]
    gen_keys: tuple[str, ...]
    lease_key: str
    scopes: tuple[Scope, ...]
    mget_keys: tuple[str, ...]
    lookup_args: tuple[int | str, ...]


class _Shape(NamedTuple):
    """The hierarchy of one combination of given parts (agent, conversation, collection)."""

    levels: tuple[tuple[int, ...], ...]  # per level, which of the given parts its key holds (indexes)
    names: tuple[str, ...]
    gens: tuple[tuple[int, ...], ...]  # per level, indexes into the plan's generation counters
    lookup_args: tuple[int | str, ...]  # the level count, then the levels' counters (see KeyPlan)


# The six levels of section 10.2, most specific first, as (agent, conv, coll) presence flags.
_SEED_LEVELS: tuple[tuple[bool, bool, bool], ...] = (
    (True, True, True),
    (True, True, False),
    (True, False, True),
    (False, False, True),
    (True, False, False),
    (False, False, False),
)


def _shape(given: tuple[bool, bool, bool]) -> _Shape:
    levels: list[tuple[bool, bool, bool]] = [given]
    for level in _SEED_LEVELS:
        if level not in levels and all(g or not want for want, g in zip(level, given, strict=True)):
            levels.append(level)
    # generation counters: tenant, type, resource, then each given part in order
    slot = {i: 3 + n for n, i in enumerate(i for i in range(3) if given[i])}
    names = tuple("+".join(compress(_PARTS, level)) or "tenant" for level in levels)
    gens = tuple((0, 1, 2, *(slot[i] for i in range(3) if level[i])) for level in levels)
    present = [i for i in range(3) if given[i]]  # the given parts, in order
    held = tuple(tuple(present.index(i) for i in range(3) if level[i]) for level in levels)
    shape = "".join("".join(str(j + 1) for j in level).ljust(6, "0") for level in gens)
    return _Shape(held, names, gens, (len(levels), shape))


_SHAPES = {(a, b, c): _shape((a, b, c)) for a in (False, True) for b in (False, True) for c in (False, True)}


class _Context(NamedTuple):
    """What every plan of one context (prefix, type, tenant and the given parts) shares: the keys of
    its plans minus the resource id, which comes last in each."""

    entry_heads: tuple[str, ...]  # per level, its entry key up to the resource id
    gen_head: tuple[str, str]  # the tenant's and the type's generation counters
    gen_resource: str  # the resource's generation counter up to the resource id
    gen_tail: tuple[str, ...]  # the given parts' generation counters
    lease_head: str  # the lease key up to the resource id
    scope_head: tuple[Scope, Scope]  # the tenant's and the type's scopes
    scope_tail: tuple[Scope, ...]  # the given parts' scopes
    shape: _Shape


# Contexts seen (a process sees few: tenants times types times the parts given; bounded anyway).
_contexts: dict[tuple[str, str, str, str | None, str | None, str | None], _Context] = {}
_CONTEXTS_MAX = 10_000


def _context(prefix: str, dtype: str, tenant: str, agent: str | None, conv: str | None, coll: str | None) -> _Context:
    keyspace = Keyspace(prefix)
    base = f"{keyspace.tenant_tag(tenant)}:{dtype}:"
    given = [
        (kind, value)
        for kind, value in ((SCOPE_AGENT, agent), (SCOPE_CONVERSATION, conv), (SCOPE_COLLECTION, coll))
        if value is not None
    ]
    shape = _SHAPES[agent is not None, conv is not None, coll is not None]
    heads = tuple([base + "".join([f"{given[j][0]}:{given[j][1]}:" for j in level]) for level in shape.levels])
    scope_head: tuple[Scope, Scope] = ((tenant,), (tenant, SCOPE_TYPE, dtype))
    scope_tail = tuple([(tenant, kind, value) for kind, value in given])
    return _Context(
        entry_heads=heads,
        gen_head=(keyspace.generation(scope_head[0]), keyspace.generation(scope_head[1])),
        gen_resource=keyspace.generation((tenant, SCOPE_RESOURCE, dtype, "")),  # ends with ':'
        gen_tail=tuple([keyspace.generation(scope) for scope in scope_tail]),
        lease_head=keyspace.lease(tenant, heads[0]),  # the lease keeps its entry key's end
        scope_head=scope_head,
        scope_tail=scope_tail,
        shape=shape,
    )


def build_plan(
    prefix: str,
    data_type: str,
    tenant_id: str,
    resource_id: object,
    agent_id: object = None,
    conversation_id: object = None,
    collection_id: object = None,
) -> KeyPlan:
    """Validate a request's ids and compute its keys, hierarchy and scopes.

    A process's first read of a key builds its plan: what the plans of one context share is built
    once, and a new resource id is added at the end of each key (3 us for a six-level plan, against
    8 us when every key was spelled in full). Every id is validated and encoded on every call: the
    context is looked up by the encoded ids, so ``True`` never finds ``1``'s context.
    """
    tenant = validate_tenant(tenant_id)
    dtype = validate_data_type(data_type)
    res = encode_id(resource_id, "resource_id")
    agent = None if agent_id is None else encode_id(agent_id, "agent_id")
    conv = None if conversation_id is None else encode_id(conversation_id, "conversation_id")
    coll = None if collection_id is None else encode_id(collection_id, "collection_id")
    where = (prefix, dtype, tenant, agent, conv, coll)
    ctx = _contexts.get(where)
    if ctx is None:
        if len(_contexts) >= _CONTEXTS_MAX:
            _contexts.clear()
        ctx = _contexts[where] = _context(*where)
    entry_keys = tuple([head + res for head in ctx.entry_heads])
    gen_keys = (*ctx.gen_head, ctx.gen_resource + res, *ctx.gen_tail)
    lease = ctx.lease_head + res
    scopes = (*ctx.scope_head, (tenant, SCOPE_RESOURCE, dtype, res), *ctx.scope_tail)
    shape = ctx.shape
    return KeyPlan(
        tenant,
        dtype,
        entry_keys,
        shape.names,
        shape.gens,
        gen_keys,
        lease,
        scopes,
        (*entry_keys, *gen_keys, lease),
        shape.lookup_args,
    )


def tenant_tag(prefix: str, tenant_id: str) -> str:
    return Keyspace(prefix).tenant_tag(tenant_id)


def gen_key(prefix: str, scope: Scope) -> str:
    """Redis key of a scope's generation counter."""
    return Keyspace(prefix).generation(scope)
