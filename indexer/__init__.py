"""Gallery indexes: embed images with an engine encoder into FAISS; build, add, remove, search, evaluate.

Public API (see docs/indexer.md)::

    from indexer import Index, Hit, Source, EmbedOptions, build_index, add_to_index, remove_from_index, evaluate_index

Attributes are imported lazily so ``import indexer`` (and ``ppssl --help``) stays light: torch and faiss
load only when something is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Index": "indexer.index", "Hit": "indexer.backend", "SearchBackend": "indexer.backend",
    "build_index": "indexer.build", "add_to_index": "indexer.build", "remove_from_index": "indexer.build",
    "create_index": "indexer.build", "add_vectors": "indexer.build", "BuildReport": "indexer.writer",
    "resume_index": "indexer.build", "rebuild_index": "indexer.build",
    "Source": "indexer.options", "EmbedOptions": "indexer.options",
    "evaluate_index": "indexer.evaluate", "EvalReport": "indexer.evaluate", "compare_plain": "indexer.evaluate",
    "AdaptSettings": "indexer.adapt",
    "merge_ivf_shards": "indexer.shards", "ShardedIndex": "indexer.shards",
    "EncoderSpec": "indexer.encoders", "feature_fingerprint": "indexer.encoders",
    "IndexParams": "indexer.faiss_index", "INDEX_TYPES": "indexer.faiss_index",
    "IndexError_": "indexer.errors", "IndexFormatError": "indexer.errors",
    "EncoderMismatchError": "indexer.errors", "PathOutsideRootError": "indexer.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'indexer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
