"""What a build indexes (:class:`Source`) and how it embeds (:class:`EmbedOptions`): the arguments of
:func:`indexer.build.build_index`, :func:`~indexer.build.add_to_index` and :func:`indexer.ingest.ingest`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from indexer.errors import IndexError_

__all__ = ["Source", "EmbedOptions"]


@dataclass(frozen=True)
class Source:
    """Where a build's photos come from: a folder, or a split of an engine dataset (exactly one)."""

    images: str | os.PathLike | None = None  # a folder of images; labels = parent folder names (None directly in it)
    dataset: str | None = None  # or an engine dataset reader name (cub200, cars, ..., folder); labels = its classes
    root: str | os.PathLike | None = None  # the dataset's root directory (with dataset=)
    split: str = "test"  # the dataset split: train, test or all (with dataset=)
    shard: tuple[int, int] | None = None  # (i, n): only every n-th file from the i-th (one job of a sharded build)

    def validate(self) -> None:
        """Refuse a source that cannot be indexed (:class:`IndexError_`). A build checks the source it is given;
        the one recorded in an index (a resumed build) is used as it stands."""
        if self.images is not None and self.dataset is not None:
            raise IndexError_("give images= or dataset=, not both")
        if self.images is None and self.dataset is None:
            raise IndexError_("give images= or dataset=")
        if self.dataset is not None and self.root is None:
            raise IndexError_("dataset= needs root=")
        if self.images is not None and not Path(self.images).is_dir():
            raise IndexError_(f"{self.images}: not a directory")

    @classmethod
    def recorded(cls, source: dict | None) -> "Source | None":
        """The source an index records in its header (``IndexHeader.source``); None when it records none (an
        index of precomputed vectors)."""
        source = source or {}
        if source.get("images") is None and source.get("dataset") is None:
            return None
        return cls(images=source.get("images"), dataset=source.get("dataset"), root=source.get("root"),
                   split=source.get("split", "test"),
                   shard=tuple(source["shard"]) if source.get("shard") else None)


@dataclass(frozen=True)
class EmbedOptions:
    """How photos are embedded: none of these changes the vectors' space (the encoder and the index's precision
    do), only speed, memory and progress reporting."""

    batch_size: int = 64  # images per forward pass
    num_workers: int = 2  # decoders: threads on a CPU, DataLoader worker processes on a GPU (sources.embed_items)
    device: str | None = None  # torch device; None = the engine's default (a GPU when there is one)
    amp: bool = True  # mixed precision (fp16 autocast) on a GPU
    progress: Callable[[int, int], None] | None = None  # progress(done, total); a tqdm bar is shown when None
    embedder: Callable | None = None  # items -> Iterator[Embedded] elsewhere (indexer.ray_embed.ray_embedder)
    chunk_size: int = 512  # images per manifest commit (the unit of work a killed build can lose)
