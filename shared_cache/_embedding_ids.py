"""The resource id of a text's embedding under a model: a digest (texts are long), kept for recent
texts because batches and warming ask for the same texts again."""

from __future__ import annotations

from typing import Any

from ._keys import text_digest

_RIDS_KEPT = 100_000
_embedding_rids: dict[tuple[str, str], str] = {}  # (model, text) -> resource id, for recent texts


def _bad_embedding_args(text: Any, model_name: Any) -> ValueError:
    return ValueError(
        f"embedding needs str text and a non-empty str model_name, got {type(text).__name__}, {model_name!r}"
    )


def _new_embedding_rid(text: str, model_name: str) -> str:
    rid = "emb_" + text_digest(f"{len(model_name)}:{model_name}{text}")
    if len(_embedding_rids) >= _RIDS_KEPT:
        _embedding_rids.clear()
    _embedding_rids[model_name, text] = rid
    return rid


def embedding_resource_ids(texts: list[str], model_name: str) -> list[str]:
    """``CacheManager.embedding_resource_id`` of many texts the caller checked are ``str`` (the batch
    path): the model is checked once and the digests of recent texts are looked up in place."""
    if not isinstance(model_name, str) or not model_name:
        raise _bad_embedding_args("", model_name)
    known = _embedding_rids.get
    return [known((model_name, text)) or _new_embedding_rid(text, model_name) for text in texts]


def embedding_resource_id(text: str, model_name: str) -> str:
    """The resource id of a text's embedding under a model (a digest: texts are long)."""
    if not isinstance(text, str) or not isinstance(model_name, str) or not model_name:
        raise _bad_embedding_args(text, model_name)
    return _embedding_rids.get((model_name, text)) or _new_embedding_rid(text, model_name)
