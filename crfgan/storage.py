"""Where outputs live: a local path or ``s3://bucket/key`` through one pyarrow filesystem, and atomic writes.

Every output file of the project appears whole or not at all (``atomic_local_dir`` does the same for a folder, such as a
checkpoint):
- local: written to a temporary name in the destination folder, given the permissions a plain ``open()`` would give
  under the user's umask (``mkstemp`` alone leaves 0600), then ``os.replace``d into place;
- S3: one PUT, which is atomic per object.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow is imported when a filesystem is needed: local writes and --help do without it
    import pyarrow.fs as pafs


def s3_endpoint(configured: str = "") -> str:
    """The S3 endpoint every stage uses: ``data.s3_endpoint`` when set, else ``AWS_ENDPOINT_URL``, else "" (AWS)."""
    return configured or os.environ.get("AWS_ENDPOINT_URL", "")


def filesystem(uri: str, endpoint: str = "") -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or ``s3://bucket/key``.

    pyarrow ignores ``AWS_ENDPOINT_URL``; the endpoint comes from ``endpoint`` (``data.s3_endpoint``) or that variable
    and is passed as ``endpoint_override``. Credentials come from the standard AWS chain (never logged here).
    """
    import pyarrow.fs as pafs

    uri = str(uri)
    if uri.startswith("s3://"):
        endpoint = s3_endpoint(endpoint)
        kw = {"region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))}
        if endpoint:
            scheme = "https" if endpoint.startswith("https://") else "http"
            kw.update(endpoint_override=endpoint.split("://", 1)[-1].rstrip("/"), scheme=scheme)
        return pafs.S3FileSystem(**kw), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """A whole file (local or S3), uncompressed whatever its name."""
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode(base: int = 0o666) -> int:
    return base & ~current_umask()


@contextlib.contextmanager
def atomic_local_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` with the umask's permissions.

    On an exception the temporary file is removed and ``path`` is untouched. ``suffix`` keeps an extension that a
    writer dispatches on (``.nii.gz``).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_local_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; on a clean exit it replaces ``path`` (a folder), the folder and every
    file in it with the umask's permissions (``mkdtemp`` alone leaves 0700).

    A reader never sees a half-written folder: an older ``path`` is removed just before the rename, so a crash between
    the two leaves no folder rather than a partial one. On an exception the temporary folder is removed.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}.", dir=parent)
    try:
        yield tmp
        # writers that create private files (safetensors' save_file leaves 0600) get the umask's mode too
        for folder, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(folder, d), _umask_mode(0o777))
            for f in files:
                os.chmod(os.path.join(folder, f), _umask_mode())
        os.chmod(tmp, _umask_mode(0o777))
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """A local text file (UTF-8), written whole or not at all, with the umask's permissions."""
    with atomic_local_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Local: temporary file in the same folder + ``os.replace``. S3: one PUT, which is atomic per object."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_local_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
    else:
        with fs.open_output_stream(path, compression=None) as f:
            f.write(data)
