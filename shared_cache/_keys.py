"""Cache keys: validation, encoding of ids, the lookup hierarchy and generation scopes.

Pure code, no I/O. Layout (section 4.3 of the standard, with a Redis Cluster hash tag)::

    {prefix}{tenant}:data_type:agent:A:conv:C:coll:L:resource

Only the parts that are given appear. Every id goes through :func:`encode_id`, which keeps safe ids
readable and turns anything else (``:``, ``*``, braces, control characters, very long strings) into
an unambiguous encoded form, so no id can change which tenant or scope a key belongs to.

Keys of the library's own bookkeeping (generations, leases, counters) put ``#`` right after the
tenant tag; a data type always starts with a letter, so the two can never meet.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass

from ._keyspace import Keyspace, Scope
from .errors import InvalidKeyError

TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
DATA_TYPE_PATTERN = r"[a-z][a-z0-9_]{0,63}"
_TENANT_RE = re.compile(TENANT_PATTERN)
_DATA_TYPE_RE = re.compile(DATA_TYPE_PATTERN)
_SAFE_ID_RE = re.compile(r"[A-Za-z0-9_.@-]{1,100}")
_MAX_ENCODED_ID_BYTES = 72  # longer ids are hashed so that keys stay bounded

# Scope kinds of a generation counter (ARCHITECTURE.md 3.1).
SCOPE_TENANT = "tenant"
SCOPE_TYPE = "type"
SCOPE_RESOURCE = "res"
SCOPE_AGENT = "agent"
SCOPE_CONVERSATION = "conv"
SCOPE_COLLECTION = "coll"


def validate_tenant(tenant_id: object) -> str:
    if not isinstance(tenant_id, str) or not _TENANT_RE.fullmatch(tenant_id):
        raise InvalidKeyError(f"invalid tenant_id {tenant_id!r}: expected a string matching {TENANT_PATTERN}")
    return tenant_id


def validate_data_type(data_type: object) -> str:
    if not isinstance(data_type, str) or not _DATA_TYPE_RE.fullmatch(data_type):
        raise InvalidKeyError(f"invalid data_type {data_type!r}: expected a string matching {DATA_TYPE_PATTERN}")
    return data_type


def encode_id(value: object, what: str = "resource_id") -> str:
    """Encode one id (resource, agent, conversation, collection) as a key component.

    Safe ids (``[A-Za-z0-9_.@-]``, up to 100 characters) stay as they are. Others become ``=`` plus
    unpadded base64url of their UTF-8 bytes, or ``~`` plus a 128-bit BLAKE2b digest when long. ``=``
    and ``~`` never occur in a safe id, so the mapping is injective (up to hash collisions).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, uuid.UUID)):
        raise InvalidKeyError(f"invalid {what} {value!r}: expected a non-empty str, int or UUID")
    text = value if isinstance(value, str) else str(value)
    if _SAFE_ID_RE.fullmatch(text):
        return text
    if not text:
        raise InvalidKeyError(f"invalid {what} {value!r}: expected a non-empty str, int or UUID")
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= _MAX_ENCODED_ID_BYTES:
        return "=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return "~" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def text_digest(text: str) -> str:
    """Bounded, id-safe digest of a long text (embedding and query keys)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# The six levels of section 10.2, most specific first, as (agent, conv, coll) presence flags.
_SEED_LEVELS: tuple[tuple[bool, bool, bool], ...] = (
    (True, True, True),
    (True, True, False),
    (True, False, True),
    (False, False, True),
    (True, False, False),
    (False, False, False),
)


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """Everything the read and write paths need for one request identity, computed once.

    ``entry_keys`` are the hierarchy's keys, most specific first (writes go to ``entry_keys[0]``).
    ``gen_keys`` are the generation counters of the request's scopes, in the order tenant, type,
    resource, then agent, conversation, collection where given. ``level_gens[i]`` lists (0-based)
    which of them tag an entry at level ``i``. ``scopes`` are the same scopes as tuples, for the
    memory tier's eviction index. ``mget_keys`` is what one lookup reads: entries, then generations.
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


def tenant_tag(prefix: str, tenant_id: str) -> str:
    return Keyspace(prefix).tenant_tag(tenant_id)


def gen_key(prefix: str, scope: Scope) -> str:
    """Redis key of a scope's generation counter."""
    return Keyspace(prefix).generation(scope)


def build_plan(
    prefix: str,
    data_type: str,
    tenant_id: str,
    resource_id: object,
    agent_id: object = None,
    conversation_id: object = None,
    collection_id: object = None,
) -> KeyPlan:
    """Validate a request's ids and compute its keys, hierarchy and scopes."""
    tenant = validate_tenant(tenant_id)
    dtype = validate_data_type(data_type)
    res = encode_id(resource_id, "resource_id")
    agent = None if agent_id is None else encode_id(agent_id, "agent_id")
    conv = None if conversation_id is None else encode_id(conversation_id, "conversation_id")
    coll = None if collection_id is None else encode_id(collection_id, "collection_id")
    given = (agent is not None, conv is not None, coll is not None)

    levels: list[tuple[bool, bool, bool]] = [given]
    for level in _SEED_LEVELS:
        if level not in levels and all(g or not want for want, g in zip(level, given, strict=True)):
            levels.append(level)

    tag = tenant_tag(prefix, tenant)
    scopes: list[Scope] = [(tenant,), (tenant, SCOPE_TYPE, dtype), (tenant, SCOPE_RESOURCE, dtype, res)]
    part_gen: dict[int, int] = {}
    for index, (kind, value) in enumerate(((SCOPE_AGENT, agent), (SCOPE_CONVERSATION, conv), (SCOPE_COLLECTION, coll))):
        if value is not None:
            scopes.append((tenant, kind, value))
            part_gen[index] = len(scopes) - 1

    entry_keys: list[str] = []
    names: list[str] = []
    level_gens: list[tuple[int, ...]] = []
    for level in levels:
        parts = [tag, dtype]
        name_parts: list[str] = []
        gens = [0, 1, 2]
        for index, (kind, value) in enumerate(
            ((SCOPE_AGENT, agent), (SCOPE_CONVERSATION, conv), (SCOPE_COLLECTION, coll))
        ):
            if level[index]:
                parts += [kind, value]  # type: ignore[list-item]
                name_parts.append(kind)
                gens.append(part_gen[index])
        parts.append(res)
        entry_keys.append(":".join(parts))
        names.append("+".join(name_parts) or "tenant")
        level_gens.append(tuple(gens))

    keyspace = Keyspace(prefix)
    gen_keys = tuple(keyspace.generation(scope) for scope in scopes)
    return KeyPlan(
        tenant_id=tenant,
        data_type=dtype,
        entry_keys=tuple(entry_keys),
        level_names=tuple(names),
        level_gens=tuple(level_gens),
        gen_keys=gen_keys,
        lease_key=keyspace.lease(tenant, entry_keys[0]),
        scopes=tuple(scopes),
        mget_keys=(*entry_keys, *gen_keys),
    )
