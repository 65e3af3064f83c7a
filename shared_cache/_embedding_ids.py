"""The resource id of a text's embedding under a model: a digest (texts are long), kept for recent
texts because batches and warming ask for the same texts again."""

from __future__ import annotations

from typing import Any

from ._keys import text_digest

_RIDS_KEPT = 100_000  # ids kept, all models together
# model -> {text -> resource id}, for recent texts. One dict per model, keyed by the text itself: a
# text's hash is computed once and kept by the str, where a (model, text) key would be a new tuple
# to build and hash on every lookup.
_embedding_rids: dict[str, dict[str, str]] = {}


def _bad_embedding_args(text: Any, model_name: Any) -> ValueError:
    return ValueError(
        f"embedding needs str text and a non-empty str model_name, got {type(text).__name__}, {model_name!r}"
    )


def check_model_name(model_name: Any) -> str:
    """``model_name`` if it is a non-empty str; ValueError otherwise."""
    if not isinstance(model_name, str) or not model_name:
        raise _bad_embedding_args("", model_name)
    return model_name


def _known(model_name: str) -> dict[str, str]:
    known = _embedding_rids.get(model_name)
    if known is None:
        known = _embedding_rids[model_name] = {}
    return known


def _make_room(n: int) -> None:
    """Forget every kept id if ``n`` more would pass the bound (each is computed again when asked)."""
    if sum(map(len, _embedding_rids.values())) + n > _RIDS_KEPT:
        for known in _embedding_rids.values():
            known.clear()


def _digest_head(model_name: str) -> bytes:
    """What a text's digest is taken of goes after this (the model's length keeps "ab" + "c" and
    "a" + "bc" apart), encoded as ``text_digest`` encodes the text."""
    return f"{len(model_name)}:{model_name}".encode("utf-8", "surrogatepass")


def embedding_resource_ids(texts: list[str], model_name: str) -> list[str]:
    """``CacheManager.embedding_resource_id`` of many texts the caller checked are ``str`` (the batch
    path): the model is checked once, recent texts are looked up in C, and the new ones digested
    in one pass."""
    known = _known(check_model_name(model_name))
    rids: list[str | None] = list(map(known.get, texts))
    if None in rids:
        _make_room(rids.count(None))
        head = _digest_head(model_name)
        for i, rid in enumerate(rids):
            if rid is None:
                text = texts[i]
                rids[i] = known[text] = "emb_" + text_digest(text, head)
    return rids  # type: ignore[return-value]  # no None left


def embedding_resource_id(text: str, model_name: str) -> str:
    """The resource id of a text's embedding under a model (a digest: texts are long)."""
    if not isinstance(text, str) or not isinstance(model_name, str) or not model_name:
        raise _bad_embedding_args(text, model_name)
    known = _known(model_name)
    rid = known.get(text)
    if rid is None:
        _make_room(1)
        rid = known[text] = "emb_" + text_digest(text, _digest_head(model_name))
    return rid
