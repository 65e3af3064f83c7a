"""The resource id of a text's embedding under a model: a digest (texts are long), kept for recent
texts because batches and warming ask for the same texts again."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ._keys import text_digest

# Kept, all models together: at most this many ids, for texts of at most this many characters in
# all (each kept id keeps its text alive: 100,000 chunks of 500 characters held 66 MB). The oldest
# go first, one at a time: forgetting them all at once held the event loop 22 ms.
_RIDS_KEPT = 100_000
_CHARS_KEPT = 8_000_000
# model -> {text -> resource id}, for recent texts, oldest first. One dict per model, keyed by the
# text itself: a text's hash is computed once and kept by the str, where a (model, text) key would
# be a new tuple to build and hash on every lookup.
_embedding_rids: dict[str, OrderedDict[str, str]] = {}
_kept = [0, 0]  # ids and characters kept


def _bad_embedding_args(text: Any, model_name: Any) -> ValueError:
    return ValueError(
        f"embedding needs str text and a non-empty str model_name, got {type(text).__name__}, {model_name!r}"
    )


def check_model_name(model_name: Any) -> str:
    """``model_name`` if it is a non-empty str; ValueError otherwise."""
    if not isinstance(model_name, str) or not model_name:
        raise _bad_embedding_args("", model_name)
    return model_name


def _known(model_name: str) -> OrderedDict[str, str]:
    known = _embedding_rids.get(model_name)
    if known is None:
        known = _embedding_rids[model_name] = OrderedDict()
    return known


def _kept_more(known: OrderedDict[str, str], ids: int, chars: int) -> None:
    """Count ``ids`` new ids of ``chars`` characters of text, just kept in ``known``, and forget the
    oldest while past either bound: other models' first (a model no longer asked for keeps none for
    long), then ``known``'s own."""
    kept = _kept
    kept[0] += ids
    kept[1] += chars
    while kept[0] > _RIDS_KEPT or kept[1] > _CHARS_KEPT:
        donor = next((k for k in _embedding_rids.values() if k and k is not known), known)
        if not donor:
            kept[0] = kept[1] = 0
            return
        while donor and (kept[0] > _RIDS_KEPT or kept[1] > _CHARS_KEPT):
            text, _ = donor.popitem(last=False)
            kept[0] -= 1
            kept[1] -= len(text)


def _digest_head(model_name: str) -> bytes:
    """What a text's digest is taken of goes after this (the model's length keeps "ab" + "c" and
    "a" + "bc" apart), encoded as ``text_digest`` encodes the text."""
    return f"{len(model_name)}:{model_name}".encode("utf-8", "surrogatepass")


# Every embedding resource id has this many ASCII characters ("emb_" and a 128-bit digest in hex):
# the batch path packs its lookup commands with one argument length for all of them.
RID_LENGTH = 36


def _digest_id(text: str, head: bytes) -> str:
    return "emb_" + text_digest(text, head)


def embedding_resource_ids(texts: list[str], model_name: str) -> list[str]:
    """``CacheManager.embedding_resource_id`` of many texts the caller checked are ``str`` (the batch
    path): the model is checked once, recent texts are looked up in C, and the new ones digested
    in one pass."""
    known = _known(check_model_name(model_name))
    rids: list[str | None] = list(map(known.get, texts))
    if None in rids:
        head = _digest_head(model_name)
        ids = chars = 0
        for i, rid in enumerate(rids):
            if rid is None:
                text = texts[i]
                rid = known.get(text)  # the same text earlier in this call
                if rid is None:
                    rid = known[text] = _digest_id(text, head)
                    ids += 1
                    chars += len(text)
                rids[i] = rid
        _kept_more(known, ids, chars)
    return rids  # type: ignore[return-value]  # no None left


def embedding_resource_id(text: str, model_name: str) -> str:
    """The resource id of a text's embedding under a model (a digest: texts are long)."""
    if not isinstance(text, str) or not isinstance(model_name, str) or not model_name:
        raise _bad_embedding_args(text, model_name)
    known = _known(model_name)
    rid = known.get(text)
    if rid is None:
        rid = known[text] = _digest_id(text, _digest_head(model_name))
        _kept_more(known, 1, len(text))
    return rid
