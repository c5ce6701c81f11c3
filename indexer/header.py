"""``header.json`` as a typed value: :class:`IndexHeader`, read and written only by :func:`read_header` and
:func:`write_header` (indexer/store.py re-exports them). Every module reads fields, never dictionary keys."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.atomic import atomic_write_json
from engine.formats import read_format_json
from indexer.errors import IndexFormatError

FORMAT = "ppssl-index"
FORMAT_VERSION = 1
HEADER_FILE = "header.json"
METRIC = "inner_product"


@dataclass
class EncoderRecord:
    """Which encoder made the searched vectors."""

    fingerprint: str  # the searched space's feature fingerprint (through the retrieval head of an adapted index)
    weights_fingerprint: str | None = None  # of the weights alone
    spec: dict | None = None  # indexer.encoders.EncoderSpec.to_dict(): how to rebuild the encoder; None = vectors only
    ref: str | None = None  # a human-readable name of the encoder


@dataclass
class IndexHeader:
    """An index's header: encoder, space, FAISS type and parameters, gallery root, state and counts."""

    encoder: EncoderRecord
    dim: int  # dimension of the searched space (FAISS)
    index_type: str  # flat | ivf | ivfsq | ivfpq | hnsw (the concrete type)
    params: dict = field(default_factory=dict)  # IndexParams.to_dict() of the FAISS index as built
    requested: dict = field(default_factory=dict)  # what the user asked for (auto types resolve per size)
    root: str | None = None  # gallery root: manifest paths are relative to it
    source: dict = field(default_factory=dict)  # where items come from: {"images": DIR} | {"dataset": ...} | {"vectors": True}
    fixed_training: bool = False  # IVF training shared with other shards (never retrained)
    label_rule: str = "top"  # labels of files added later: top-level folder (top) or parent folder (parent)
    counts: dict = field(default_factory=lambda: {"records": 0, "faiss": 0, "skipped": 0})
    state: str = "building"  # building | complete
    created: str | None = None
    updated: str | None = None
    metric: str = METRIC
    adapt: dict | None = None  # the retrieval head fitted on the gallery (indexer.adapt), None = plain
    adapt_skipped: str | None = None  # why the gallery was not adapted
    precision: dict | None = None  # fp32 | int8 and its model (indexer.precision); None = not chosen yet
    published: list = field(default_factory=list)  # vector-database copies kept in step ({location, collection})
    trained_on: int | None = None  # IVF: vectors the training used
    plain_view: bool = False  # an adapted index opened without its head (Index.open(plain=True)); never written
    extra: dict = field(default_factory=dict)  # keys this version does not know (kept on rewrite)

    @classmethod
    def from_dict(cls, doc: dict, path: Path | str = HEADER_FILE) -> "IndexHeader":
        """Validate and type a parsed header (format and version already checked)."""
        dim = doc["dim"]
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise IndexFormatError(f"{path}: dim must be a positive integer, not {dim!r}")
        enc = doc["encoder"]
        if not isinstance(enc, dict) or not isinstance(enc.get("fingerprint"), str):
            raise IndexFormatError(f"{path}: the encoder entry records no fingerprint")
        if doc["metric"] != METRIC:
            raise IndexFormatError(f"{path}: metric {doc['metric']!r} is not supported (only {METRIC!r})")
        known = {f.name for f in fields(cls)} - {"encoder", "extra"}
        kw = {k: doc[k] for k in known if k in doc and doc[k] is not None}
        extra = {k: v for k, v in doc.items() if k not in known | {"encoder", "format", "format_version"}}
        record = EncoderRecord(**{k: enc.get(k) for k in ("fingerprint", "weights_fingerprint", "spec", "ref")})
        return cls(encoder=record, extra=extra, **kw)

    def to_dict(self) -> dict:
        """The JSON document (optional fields left out while unset, as before the dataclass)."""
        d = asdict(self)
        extra = d.pop("extra")
        for key, empty in (("adapt", None), ("adapt_skipped", None), ("precision", None), ("published", []),
                           ("trained_on", None), ("plain_view", False)):
            if d[key] == empty:
                del d[key]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d, **extra}

    def copy(self) -> "IndexHeader":
        return copy.deepcopy(self)

    @property
    def stored_dim(self) -> int:
        """Dimension of the stored vectors (the encoder's own features; the head maps them to ``dim``)."""
        return int(self.adapt["stored_dim"]) if self.adapt else self.dim


def read_header(index_dir: str | Path) -> IndexHeader:
    path = Path(index_dir) / HEADER_FILE
    if not path.is_file():
        raise IndexFormatError(f"{index_dir}: not an index directory (no {HEADER_FILE})")
    doc = read_format_json(path, FORMAT, FORMAT_VERSION, ("dim", "metric", "index_type", "encoder"),
                           IndexFormatError, kind="header", newer_than="this indexer")
    return IndexHeader.from_dict(doc, path)


def write_header(index_dir: str | Path, header: IndexHeader) -> None:
    atomic_write_json(Path(index_dir) / HEADER_FILE, header.to_dict())
