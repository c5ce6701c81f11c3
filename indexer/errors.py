"""Errors of the indexer; all are :class:`engine.errors.PPSSLError`, so the CLI prints one line (exit 2)."""

from __future__ import annotations

from engine.errors import PPSSLError


class IndexError_(PPSSLError, RuntimeError):
    """Base class: something about an index directory or a request on it is wrong."""


class IndexFormatError(IndexError_):
    """An index directory is missing, malformed, or its header, manifest and FAISS file disagree."""


class EncoderMismatchError(IndexError_):
    """An encoder other than the one that built the index was offered; the message names both fingerprints."""

    def __init__(self, index_fp: str, encoder_fp: str, what: str = "search"):
        super().__init__(
            f"refusing to {what}: the index was built with encoder {index_fp} but the given encoder is "
            f"{encoder_fp}; features of different encoders are not comparable (rebuild the index with "
            "this encoder, or use the one recorded in header.json)"
        )
        self.index_fingerprint = index_fp
        self.encoder_fingerprint = encoder_fp


class IndexStorageError(IndexError_, OSError):
    """The index directory cannot be written (disk full, read-only, file size limit); committed work is kept."""


class PathOutsideRootError(IndexError_, PermissionError):
    """A path resolves outside the gallery root recorded in the index (``..``, absolute path, symlink)."""
