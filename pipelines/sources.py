"""Input discovery and staging for ``crfgan preprocess``: local folders, globs, ``s3://`` prefixes, zip/tar archives.

Discovery lists **paths and sizes only** (never file contents) and turns them into *units* — one NIfTI/ITK file, one
folder of DICOM files (split into series later, by SeriesInstanceUID, inside the worker that stages the folder), or
one archive. Reading happens in Ray tasks (``pipelines/preprocess.py``).

``phantom://N?size=S&seed=K[&spacing=MM]`` is a synthetic input: N units, one procedural CT phantom each
(``crfgan.phantom``), generated inside the worker; its query is checked by ``check_inputs`` before Ray starts.

Archives are extracted by ``safe_extract``: every member is checked first, and the whole archive is refused when
any member has an absolute path, a ``..`` component, or is a link that points outside the extraction folder; regular
files are then written by our own code under the target folder only (never ``extractall``).
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from crfgan.io import ITK_SUFFIXES, NIFTI_SUFFIXES
from crfgan.shards import filesystem

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
MAX_EXTRACT_BYTES = 64 * 2**30  # refuse archives that would unpack to more than this (zip bombs)


class UnsafeArchive(ValueError):
    pass


class InputError(ValueError):
    """An input URI that cannot be used at all (a bad ``phantom://`` query); raised before any work starts."""


def check_inputs(inputs: list[str], cfg=None) -> None:
    """Raise ``InputError`` for an input that is malformed on its face (cheap, no listing; run before Ray starts).
    With ``cfg``: a ``phantom://`` set whose field of view (size × spacing) is under half or over twice the config's
    cube (``model.image_size`` × ``data.spacing_mm``, with ``data.fit=crop_pad``) is refused: resampled to the
    config's spacing it would be a small blob in air, or cut off."""
    from crfgan.phantom import PhantomURIError, parse_uri

    for uri in inputs:
        if uri.startswith("phantom://"):
            try:
                q = parse_uri(uri)
            except PhantomURIError as e:
                raise InputError(f"input {e}") from None
            sp = cfg.data.spacing_mm if cfg is not None and cfg.data.fit == "crop_pad" else 0
            if sp > 0:
                fov, cube = q["size"] * q["spacing_mm"], cfg.model.image_size * sp
                if not 0.5 <= fov / cube <= 2.0:
                    raise InputError(
                        f"input {uri!r}: {q['size']} voxels at {q['spacing_mm']:g} mm span {fov:g} mm, but the "
                        f"config's cube is {cfg.model.image_size} voxels at data.spacing_mm={sp:g} ({cube:g} mm): "
                        f"resampled, the phantom would fill {100 * min(fov / cube, 1):.0f} % of the cube's edge"
                        f"{'' if fov < cube else ' and be cut off'}; add &spacing={cube / q['size']:g} to the URI "
                        "(or set data.spacing_mm=0 to keep the phantom's own spacing)")
        elif "://" not in uri:  # a local path or glob: listed here already costs nothing
            if not (glob.glob(uri, recursive=True) if glob.has_magic(uri) else os.path.exists(uri)):
                raise InputError(f"input {uri!r} matches no file or folder")


def _phantom_units(uri: str) -> list[dict]:
    """``phantom://N?…`` → N units of kind ``phantom``, named by each volume's canonical URI."""
    from crfgan.phantom import VERSION, PhantomURIError, parse_uri, volume_uri

    try:
        q = parse_uri(uri)
    except PhantomURIError as e:
        raise InputError(f"input {e}") from None
    return [{"uri": volume_uri(i, q["size"], q["seed"], q["spacing_mm"]), "kind": "phantom", "size": 0, "files": [],
             "version": f"phantom-v{VERSION}"} for i in range(q["count"])]


def kind_of(name: str) -> str | None:
    """file | dicom | archive | None (ignored: READMEs, JSON sidecars …)."""
    low = name.lower()
    base = posixpath.basename(low)
    if low.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES):
        return "file"
    if low.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    suffix = posixpath.splitext(base)[1]
    if low.endswith(DICOM_SUFFIXES) or suffix == "" or suffix[1:].isdigit():  # CT.1.2.840….16573, IM0001
        return "dicom" if not base.startswith(".") else None
    return None


def _units_from_listing(files: list[tuple], scheme: str) -> list[dict]:
    """[(path, size[, version])] → units; DICOM files are grouped by their folder (series split happens when staged).

    ``version`` says which content a path holds (local: mtime in ns; S3: the ETag); a unit's version combines its
    files', so a scan replaced in place — even with the same size — is prepared again.
    """
    units, dicom_dirs = [], {}
    for path, size, *version in files:
        k = kind_of(path)
        v = str(version[0]) if version else ""
        if k in ("file", "archive"):
            units.append({"uri": scheme + path, "kind": k, "size": int(size), "files": [], "version": v})
        elif k == "dicom":
            dicom_dirs.setdefault(posixpath.dirname(path), []).append((path, size, v))
    for d, members in dicom_dirs.items():
        members.sort()
        version = hashlib.sha256("|".join(f"{p}:{v}" for p, _, v in members).encode()).hexdigest()[:16]
        units.append({"uri": scheme + d, "kind": "dicom", "size": int(sum(s for _, s, _ in members)),
                      "files": [scheme + p for p, _, _ in members], "version": version})
    return sorted(units, key=lambda u: u["uri"])


def _stat(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, st.st_size, st.st_mtime_ns


def _link_refusal(path: str, top: str) -> str | None:
    """Why a symbolic link inside an input folder is not read (None: it is followed). The rule, as for archive
    members: a link is followed only to a file inside the input folder; a dangling link, a link that leaves the folder
    and a link to a folder (never walked: no loops) each get an error row."""
    target = os.path.realpath(path)
    if not os.path.exists(target):
        return f"dangling symbolic link (to {os.readlink(path)})"
    if os.path.isdir(target):
        return "symbolic link to a folder: not followed"
    if os.path.commonpath([target, os.path.realpath(top)]) != os.path.realpath(top):
        return "symbolic link that points outside the input folder: not followed"
    return None


def _list_local(pattern: str) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """(files as (path, size, mtime), refused entries as (path, reason)) under a path or glob."""
    paths = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
    if not paths or not any(os.path.exists(p) for p in paths):
        raise FileNotFoundError(f"input {pattern!r} matches no file or folder")
    out, refused = [], []
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):  # does not descend into linked folders
                dirs.sort()
                for n in sorted(names) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
                    f = os.path.join(root, n)
                    why = _link_refusal(f, p) if os.path.islink(f) else None
                    if why:
                        refused.append((f, why))
                    elif os.path.isfile(f):
                        out.append(_stat(f))
        elif os.path.isfile(p):
            out.append(_stat(p))
    return out, refused


def _etags(bucket_prefix: str, endpoint: str) -> dict[str, str]:
    """{"bucket/key": ETag} under a prefix (pyarrow's listing has no ETags; boto3's has)."""
    import boto3

    bucket, _, prefix = bucket_prefix.partition("/")
    client = boto3.client("s3", endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL") or None)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({f"{bucket}/{o['Key']}": o["ETag"].strip('"') for o in page.get("Contents", [])})
    return out


def _list_s3(uri: str, endpoint: str) -> list[tuple[str, int, str]]:
    fs, path = filesystem(uri, endpoint)
    magic = glob.has_magic(path)
    base = path
    if magic:  # list the longest prefix without wildcards, then match
        parts = path.split("/")
        i = next(i for i, p in enumerate(parts) if glob.has_magic(p))
        base = "/".join(parts[:i])
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        entries = [info]
    else:
        entries = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = [(e.path, e.size or 0) for e in entries if e.type == pafs.FileType.File]
    if magic:
        out = [(p, s) for p, s in out if fnmatch.fnmatch(p, path) or fnmatch.fnmatch(posixpath.dirname(p), path)]
    if not out:
        raise FileNotFoundError(f"input {uri!r} matches no object")
    etags = _etags(base, endpoint)
    return [(p, s, etags.get(p, "")) for p, s in out]


def discover(inputs: list[str], endpoint: str = "") -> list[dict]:
    """Units for every input URI (local path/glob, ``s3://bucket/prefix[glob]`` or ``phantom://N?size=S&seed=K``),
    sorted and de-duplicated."""
    units = {}
    for uri in inputs:
        if uri.startswith("phantom://"):
            units.update({u["uri"]: u for u in _phantom_units(uri)})
            continue
        refused: list = []
        if uri.startswith("s3://"):
            listing, scheme = _list_s3(uri, endpoint), "s3://"
        else:
            (listing, refused), scheme = _list_local(uri), ""
        for u in _units_from_listing(listing, scheme):
            units[u["uri"]] = u
        for path, why in refused:  # not read, but never silently dropped: preprocess gives each an error row
            units[path] = {"uri": path, "kind": "refused", "size": 0, "files": [], "version": "", "reason": why}
    return [units[k] for k in sorted(units)]


def unit_key(unit: dict, config_hash: str) -> str:
    """Identifies a finished unit: same input (URI, size, file list, version: mtime or ETag) and config → same key."""
    blob = "|".join([unit["uri"], str(unit["size"]), str(len(unit["files"])), unit.get("version", ""), config_hash])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------- staging
def stage(uri: str, dest_dir: str, endpoint: str = "") -> str:
    """A local path for ``uri``: local files are used in place, S3 objects are streamed into ``dest_dir``."""
    if not uri.startswith("s3://"):
        return uri
    fs, path = filesystem(uri, endpoint)
    os.makedirs(dest_dir, exist_ok=True)
    local = os.path.join(dest_dir, posixpath.basename(path))
    with fs.open_input_stream(path, compression=None, buffer_size=8 * 2**20) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, length=8 * 2**20)
    return local


HEADER_BYTES = 64 * 2**10  # a NIfTI header is 348 or 540 bytes; a gzip stream reaches it well within 64 KiB


def read_scan_bytes(uri: str, endpoint: str = "", max_voxels: int = 1_000_000_000, fs=None) -> bytes:
    """The bytes of one NIfTI/ITK object; a NIfTI header is read first (one ranged read) and checked, so a header
    claiming more than ``max_voxels`` is refused before the rest of the object is downloaded."""
    from crfgan.io import ITK_SUFFIXES, check_header_bytes

    if fs is None:
        fs, path = filesystem(uri, endpoint)
    else:
        path = uri[len("s3://"):] if uri.startswith("s3://") else uri
    with fs.open_input_file(path) as f:
        head = f.read(HEADER_BYTES)
        if not uri.lower().endswith(ITK_SUFFIXES) and len(head) == HEADER_BYTES:
            check_header_bytes(head, uri, max_voxels)
        return head + f.read()


def read_bytes(uri: str, endpoint: str = "") -> bytes:
    """The raw bytes of one object/file (no transparent gunzip: NIfTI readers take the .gz bytes)."""
    fs, path = filesystem(uri, endpoint)
    with fs.open_input_file(path) as f:
        return f.read()


def _check_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    if ".." in p.parts:
        raise UnsafeArchive(f"member {name!r} points outside the extraction folder ('..')")
    return p


def _inside(base: Path, target: Path) -> bool:
    base, target = base.resolve(), target.resolve()
    return target == base or base in target.parents


def safe_extract(archive: str, dest: str) -> list[str]:
    """Extract a zip/tar/tar.gz into ``dest``, refusing the whole archive on any unsafe member; returns files."""
    dest_p = Path(dest)
    dest_p.mkdir(parents=True, exist_ok=True)
    written = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            for i in infos:
                _check_member(i.filename)
                if stat.S_ISLNK(i.external_attr >> 16):
                    raise UnsafeArchive(f"member {i.filename!r} is a symbolic link; links are refused in zip archives")
            if sum(i.file_size for i in infos) > MAX_EXTRACT_BYTES:
                raise UnsafeArchive(f"archive would unpack to more than {MAX_EXTRACT_BYTES / 2**30:.0f} GiB")
            for i in infos:
                if i.is_dir():
                    continue
                target = dest_p / _check_member(i.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not _inside(dest_p, target):
                    raise UnsafeArchive(f"member {i.filename!r} resolves outside the extraction folder")
                with z.open(i) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                written.append(str(target))
        return written
    try:
        tf = tarfile.open(archive, "r:*")  # noqa: SIM115 — closed by the with below
    except tarfile.TarError as e:
        raise UnsafeArchive(f"is not a readable zip or tar archive ({e})") from None
    with tf:
        members = tf.getmembers()
        for m in members:
            p = _check_member(m.name)
            if m.issym() or m.islnk():
                link = PurePosixPath(m.linkname)
                resolved = posixpath.normpath(str(p.parent / link)) if m.issym() else posixpath.normpath(m.linkname)
                if link.is_absolute() or resolved.startswith(".."):
                    raise UnsafeArchive(f"member {m.name!r} links outside the extraction folder ({m.linkname!r})")
        if sum(m.size for m in members if m.isfile()) > MAX_EXTRACT_BYTES:
            raise UnsafeArchive(f"archive would unpack to more than {MAX_EXTRACT_BYTES / 2**30:.0f} GiB")
        for m in members:
            if not m.isfile():  # directories are created on demand; links, devices, fifos are not extracted
                continue
            target = dest_p / _check_member(m.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(dest_p, target):
                raise UnsafeArchive(f"member {m.name!r} resolves outside the extraction folder")
            src = tf.extractfile(m)
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            written.append(str(target))
    return written
