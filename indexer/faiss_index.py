"""FAISS index types, their size-dependent defaults, and the few FAISS operations the indexer needs.

All indexes use inner product on L2-normalised vectors, which is cosine similarity. Ids are the
manifest's: ``flat`` and ``hnsw`` are wrapped in ``IndexIDMap2``; the IVF types store ids natively.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

INDEX_TYPES = ("flat", "ivf", "ivfsq", "ivfpq", "hnsw")
#: the inverted-file types: trained (k-means cells), mergeable, nprobe-controlled
IVF_TYPES = ("ivf", "ivfsq", "ivfpq")
#: types whose stored codes are lossy, so their candidates can be re-scored from the float32 vector file
RERANK_TYPES = ("ivfsq", "ivfpq")

#: Galleries up to this size get an exact index from ``auto``; above it IVF-SQ8 with an exact re-rank,
#: which at 1M x 1280 matched IVF-Flat's recall at 1.2-1.5x its QPS with a quarter of its memory
#: (benchmarks/results/search_ann_1m*.md).
AUTO_FLAT_MAX = 100_000
#: candidates per requested result that ``ivfsq`` re-scores exactly; with 4 its recall@10 equalled IVF-Flat's at
#: the same nprobe in every benchmarked setting
DEFAULT_RERANK = 4


@dataclass
class IndexParams:
    """Index type and its parameters; unset (None) fields get size-dependent defaults."""

    index_type: str = "flat"  # "flat" (exact inner product), "ivf" (IVF-Flat), "ivfsq" (IVF, 8-bit scalar
    #   quantiser, exact re-rank), "ivfpq" (IVF-PQ), "hnsw"
    nlist: int | None = None  # IVF: number of k-means cells (default about 4 * sqrt(N))
    nprobe: int | None = None  # IVF: cells visited per query (default: see default_nprobe)
    pq_m: int | None = None  # IVF-PQ: sub-quantizers (bytes per vector at 8 bits); a divisor of dim
    pq_nbits: int | None = None  # IVF-PQ: bits per sub-quantizer code (8; fewer for tiny galleries)
    hnsw_m: int | None = None  # HNSW: graph degree M (default 32)
    ef_construction: int | None = None  # HNSW: candidate list size while building (default 80)
    ef_search: int | None = None  # HNSW: candidate list size while searching (default 128)
    rerank: int | None = None  # ivfsq/ivfpq: fetch k * rerank candidates and re-score them exactly from the
    #   stored float32 vectors (default 4 for ivfsq, 0 = off for ivfpq)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexParams":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def default_nlist(n: int) -> int:
    """About 4 * sqrt(N) cells, but at least 39 training points per cell (FAISS's k-means minimum)."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39)))


def default_nprobe(nlist: int) -> int:
    """Cells probed: nlist/16 (at least 16), measured to give recall@10 >= 0.95 on clustered features
    (benchmarks/results/index.md)."""
    return int(min(nlist, max(16, nlist // 16)))


def default_pq_m(dim: int) -> int:
    """The divisor of ``dim`` nearest to dim/16 (16 dimensions per one-byte code)."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / 16), m))


def resolve_params(params: IndexParams, n: int, dim: int) -> IndexParams:
    """Fill unset fields with the defaults for a gallery of ``n`` vectors of dimension ``dim``."""
    p = IndexParams(**params.to_dict())
    if p.index_type == "auto":
        p.index_type = "flat" if n <= AUTO_FLAT_MAX else "ivfsq"
    if p.index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {p.index_type!r}; use one of {', '.join(INDEX_TYPES)} or auto")
    if p.index_type in IVF_TYPES:
        p.nlist = p.nlist or default_nlist(n)
        p.nprobe = p.nprobe or default_nprobe(p.nlist)
    if p.index_type in RERANK_TYPES and p.rerank is None:
        p.rerank = DEFAULT_RERANK if p.index_type == "ivfsq" else 0
    if p.index_type == "ivfpq":
        p.pq_m = p.pq_m or default_pq_m(dim)
        if dim % p.pq_m:
            raise ValueError(f"pq_m={p.pq_m} must divide the dimension {dim}")
        # 8-bit codes need ~39 * 256 training points; smaller galleries get fewer bits (never 2**bits > N)
        p.pq_nbits = p.pq_nbits or int(max(1, min(8, max(4, math.floor(math.log2(max(n, 1) / 39 + 1e-9))),
                                                  math.floor(math.log2(max(n, 2))))))
    if p.index_type == "hnsw":
        p.hnsw_m = p.hnsw_m or 32
        p.ef_construction = p.ef_construction or 80
        p.ef_search = p.ef_search or 128
    return p


def empty_index(p: IndexParams, dim: int):
    """An untrained, empty index of the resolved type."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if p.index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if p.index_type == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, p.nlist, ip)
    if p.index_type == "ivfsq":
        return faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, p.nlist, faiss.ScalarQuantizer.QT_8bit, ip)
    if p.index_type == "ivfpq":
        return faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, p.nlist, p.pq_m, p.pq_nbits, ip)
    if p.index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, p.hnsw_m, ip)
        inner.hnsw.efConstruction = p.ef_construction
        return faiss.IndexIDMap2(inner)
    raise ValueError(f"unknown index type {p.index_type!r}")


def _ivf_of(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def train_index(p: IndexParams, dim: int, vectors: np.ndarray, seed: int = 0):
    """An empty index of type ``p``, trained on (a sample of) ``vectors`` where the type needs training."""
    index = empty_index(p, dim)
    if not index.is_trained:
        if len(vectors) < max(p.nlist or 1, 2 ** (p.pq_nbits or 0)):
            raise ValueError(f"{p.index_type} with nlist={p.nlist} needs at least "
                             f"{max(p.nlist or 1, 2 ** (p.pq_nbits or 0))} vectors to train, got {len(vectors)}")
        cap = 256 * max(p.nlist or 1, 2 ** (p.pq_nbits or 0))
        sample = vectors
        if len(vectors) > cap:
            sample = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), cap, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def add(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))


def remove(index, ids) -> int:
    """Remove ids in place; only flat and IVF types support it (callers rebuild HNSW)."""
    import faiss

    return int(index.remove_ids(faiss.IDSelectorBatch(np.asarray(list(ids), dtype=np.int64))))


def index_type_of(index) -> str:
    """Which of :data:`INDEX_TYPES` a FAISS index is (``"unknown"`` otherwise)."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index
    inner = faiss.downcast_index(inner)
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(inner, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(inner, faiss.IndexIVFScalarQuantizer):
        return "ivfsq"
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "unknown"


def stored_ids(index) -> np.ndarray:
    """The ids an index holds (unsorted), read from its id map or its inverted lists."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = _ivf_of(index)
    if ivf is None:
        raise ValueError(f"cannot list the ids of a {type(index).__name__}")
    inv = ivf.invlists
    out = []
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if n:
            ptr = inv.get_ids(lst)
            out.append(faiss.rev_swig_ptr(ptr, n).copy())
            inv.release_ids(lst, ptr)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def set_search_params(index, p: IndexParams) -> None:
    """Apply nprobe / efSearch to a (CPU or GPU) index."""
    import faiss

    if p.index_type in IVF_TYPES and p.nprobe:
        ivf = _ivf_of(index)
        if ivf is not None:
            ivf.nprobe = int(p.nprobe)
        else:  # GPU or sharded: a ParameterSpace reaches every sub-index
            space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
            space.set_index_parameter(index, "nprobe", int(p.nprobe))
    if p.index_type == "hnsw" and p.ef_search:
        inner = faiss.downcast_index(index.index if hasattr(index, "id_map") else index)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = int(p.ef_search)


def maybe_to_gpu(index, p: IndexParams, use_gpu: bool | None = None):
    """A GPU copy of ``index`` for searching when FAISS has GPUs (all of them, sharded); else ``index``.

    HNSW has no GPU implementation and stays on the CPU; so does any index the GPU code refuses.
    """
    import faiss

    if use_gpu is False or p.index_type == "hnsw":
        return index
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if ngpu <= 0:
        if use_gpu:
            raise RuntimeError("use_gpu=True but FAISS sees no GPU (is faiss-gpu installed?)")
        return index
    try:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = True  # split the vectors over the GPUs (faiss.IndexShards inside)
        co.useFloat16 = p.index_type == "ivfpq"
        gpu = faiss.index_cpu_to_all_gpus(index, co=co, ngpu=ngpu)
    except (RuntimeError, AttributeError, TypeError):
        return index
    set_search_params(gpu, p)
    return gpu
