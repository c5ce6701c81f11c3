"""``ppssl data fetch NAME --out DIR``: download a fine-grained dataset from its official address, verify it,
and unpack it in the layout its reader expects.

Downloads resume (an interrupted file is kept as ``NAME.part`` and continued with an HTTP Range request),
every file is checked against the checksum published for it before it is used, and archives are unpacked
only after every member has been checked: no absolute path, no ``..``, no link pointing outside ``DIR``, no
device or FIFO. Without network the error says so in one line, and a file placed by hand in ``DIR`` (under
its official name) is verified and used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.atomic import atomic_write_json
from engine.errors import PPSSLError

CHUNK = 1 << 20
TIMEOUT_S = 60


class FetchError(PPSSLError, RuntimeError):
    """A dataset could not be fetched: no network, a bad checksum, a hostile archive, an unknown name."""


@dataclass(frozen=True)
class Remote:
    """One file of a dataset at its official address."""

    url: str  # official download address
    filename: str  # name it is stored under in DIR
    md5: str  # checksum published for it (by the dataset's authors or torchvision)
    unpack_into: str | None = ""  # archive: unpack into DIR/<this> ("" = DIR itself); None = keep the file as is
    move_to: str = ""  # a plain file: move it into DIR/<this>


@dataclass(frozen=True)
class DatasetSource:
    """What ``ppssl data fetch`` knows about a dataset."""

    files: tuple[Remote, ...]  # empty: no official address works (``manual`` says what to do)
    reader: str  # engine dataset reader name
    root: str  # the reader's --root, relative to DIR
    about: str  # one line for the listing
    manual: str = ""  # why it cannot be fetched and how to get it


CATALOGUE: dict[str, DatasetSource] = {
    "cub200": DatasetSource(
        files=(Remote("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                      "CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78"),),
        reader="cub200", root="CUB_200_2011", about="CUB-200-2011 birds, 200 species, 11,788 images (1.1 GB)"),
    "aircraft": DatasetSource(
        files=(Remote("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                      "fgvc-aircraft-2013b.tar.gz", "d4acdd33327262359767eeaa97a4f732"),),
        reader="aircraft", root=".", about="FGVC-Aircraft, 100 variants, 10,000 images (2.6 GB)"),
    "flowers102": DatasetSource(
        files=(Remote("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "102flowers.tgz",
                      "52808999861908f626f3c1f4e79d11fa", unpack_into="flowers-102"),
               Remote("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", "imagelabels.mat",
                      "e0620be6f572b9609742df49c70aed4d", unpack_into=None, move_to="flowers-102"),
               Remote("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat", "setid.mat",
                      "a5357ecc9cb78c4bef273ce3793fc85c", unpack_into=None, move_to="flowers-102")),
        reader="flowers102", root=".", about="Oxford Flowers-102, 102 species, 8,189 images (330 MB)"),
    "cars": DatasetSource(
        files=(), reader="cars", root=".", about="Stanford Cars, 196 models, 16,185 images",
        manual="the official Stanford address (ai.stanford.edu/~jkrause/cars) no longer serves the files and "
               "torchvision dropped its download; obtain cars_train/, cars_test/, devkit/ and "
               "cars_test_annos_withlabels.mat and place them under DIR/stanford_cars/ (torchvision's layout)"),
}


def fetch_dataset(name: str, out_dir, *, catalogue: dict[str, DatasetSource] | None = None,
                  progress: bool = True) -> Path:
    """Fetch ``name`` into ``out_dir`` (resumable, verified, safely unpacked); returns the reader's root.

    Raises:
        FetchError: unknown name, no official address, no network, checksum mismatch, hostile archive.
    """
    catalogue = CATALOGUE if catalogue is None else catalogue
    if name not in catalogue:
        raise FetchError(f"unknown dataset {name!r}; fetchable: {', '.join(sorted(catalogue))}")
    src = catalogue[name]
    if not src.files:
        raise FetchError(f"{name}: cannot be fetched: {src.manual}")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".fetched-{name}.json"
    if _marker_ok(marker, src):
        return out / src.root
    for remote in src.files:
        path = download(remote, out, progress=progress)
        if remote.unpack_into is not None:
            unpack(path, out / remote.unpack_into)
        elif remote.move_to:
            dest = out / remote.move_to / remote.filename
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
    atomic_write_json(marker, {"name": name, "files": [r.md5 for r in src.files]})
    return out / src.root


def _marker_ok(marker: Path, src: DatasetSource) -> bool:
    try:
        return json.loads(marker.read_text())["files"] == [r.md5 for r in src.files]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(remote: Remote, out: Path, *, progress: bool = True) -> Path:
    """``out/filename`` with its checksum verified, downloading (or resuming ``.part``) when needed."""
    final = out / remote.filename
    if final.is_file():
        if md5_file(final) == remote.md5:
            return final
        final.unlink()  # a bad copy (ours, truncated, or placed by hand): fetch it again
    part = out / (remote.filename + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": "ppssl-data-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    host = urllib.parse.urlsplit(remote.url).netloc
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            resumed = have and resp.status == 206
            total = resp.headers.get("Content-Length")
            total = (int(total) + (have if resumed else 0)) if total and total.isdigit() else None
            from tqdm.auto import tqdm

            with open(part, "ab" if resumed else "wb") as fh, \
                    tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                         desc=remote.filename, disable=not progress) as bar:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    fh.write(block)
                    bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is already complete
            pass
        else:
            raise FetchError(f"{remote.url}: the server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot reach {host} ({reason}); check the network, or download {remote.url} by hand "
                         f"to {final} and rerun (it is then verified and used)") from None
    got = md5_file(part)
    if got != remote.md5:
        part.unlink()
        raise FetchError(f"{remote.filename}: checksum mismatch (md5 {got}, published {remote.md5}); the download "
                         "was deleted, rerun to fetch it again")
    os.replace(part, final)
    return final


def _member_problem(name: str, link: str | None, kind: str, dest: Path) -> str | None:
    """Why an archive member may not be unpacked into ``dest`` (None when it may)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in p.parts:
        return "'..' in its path"
    if kind in ("device", "fifo"):
        return f"{kind} file"
    target = (dest / p).resolve()
    if not target.is_relative_to(dest.resolve()):
        return "path outside the destination"
    if link is not None:
        lp = PurePosixPath(link.replace("\\", "/"))
        base = dest if kind == "hardlink" else (dest / p).parent
        if lp.is_absolute() or not (base / lp).resolve().is_relative_to(dest.resolve()):
            return f"link to {link!r} outside the destination"
    return None


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a .tar(.gz/.bz2/.xz) or .zip into ``dest`` after checking every member (see module doc)."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                why = "symbolic link" if is_link else _member_problem(info.filename, None, "file", dest)
                if why:
                    raise FetchError(f"{archive.name}: refusing to unpack member {info.filename!r} ({why})")
            zf.extractall(dest)
        return
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise FetchError(f"{archive.name}: not a readable archive ({exc})") from None
    with tf:
        members = tf.getmembers()
        for m in members:
            kind = ("hardlink" if m.islnk() else "symlink" if m.issym() else
                    "device" if (m.ischr() or m.isblk()) else "fifo" if m.isfifo() else "file")
            why = _member_problem(m.name, m.linkname if (m.islnk() or m.issym()) else None, kind, dest)
            if why:
                raise FetchError(f"{archive.name}: refusing to unpack member {m.name!r} ({why})")
        try:
            tf.extractall(dest, members=members, filter="data")  # Python's own guard as well (3.10.12+)
        except TypeError:
            tf.extractall(dest, members=members)  # older Python: the checks above are the guard


def describe() -> list[str]:
    """One line per fetchable dataset."""
    return [f"{name:<11} {src.about}" + ("" if src.files else "  [manual: no official download]")
            for name, src in CATALOGUE.items()]
