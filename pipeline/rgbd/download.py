"""Fetch the dataset archive and the trials file; unpack the archive safely.

`fetch` takes an http(s) URL, a `file://` URL or a plain path (clusters without internet
copy the archive somewhere first). HTTP downloads go to `<name>.partial`, resume with a Range
request after a broken connection (and on the next run), retry with exponential back-off,
and are renamed into place only when the size (and the SHA-256, when given) match.
`extract_zip` refuses members that would land outside the target folder.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.errors import UserError

CHUNK = 1 << 20
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
              TimeoutError)


class DownloadError(UserError):
    """The URL cannot be fetched, or what arrived is not what was expected."""


class ArchiveError(UserError):
    """The archive is truncated, corrupt, or holds a member that would escape the target."""


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def local_path(source: str) -> Path:
    """The file a `file://` URL or plain path names."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    return Path(source)


def fetch(source: str, dest: str | Path, *, size: int = 0, sha256: str = "", retries: int = 5,
          timeout_s: float = 60.0, backoff_s: float = 1.0, progress: bool = True) -> bool:
    """Make `dest` a complete copy of `source`; False if it already was (nothing done)."""
    dest = Path(dest)
    if dest.is_file() and (size == 0 or dest.stat().st_size == size):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    if is_url(source):
        _fetch_http(source, partial, size=size, retries=retries, timeout_s=timeout_s,
                    backoff_s=backoff_s, progress=progress)
    else:
        path = local_path(source)
        if not path.is_file():
            raise DownloadError(f"{source}: file not found")
        shutil.copyfile(path, partial)
    _verify(source, partial, size=size, sha256=sha256)
    os.replace(partial, dest)
    return True


def _verify(source: str, partial: Path, *, size: int, sha256: str) -> None:
    got = partial.stat().st_size
    if size and got != size:
        partial.unlink()
        raise DownloadError(f"{source}: got {got} bytes, expected {size} (download.size)")
    if sha256:
        digest = file_sha256(partial)
        if digest != sha256.lower():
            partial.unlink()
            raise DownloadError(f"{source}: SHA-256 is {digest}, expected {sha256} "
                                "(download.sha256)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _fetch_http(url: str, partial: Path, *, size: int, retries: int, timeout_s: float,
                backoff_s: float, progress: bool,
                sleep: Callable[[float], None] = time.sleep) -> None:
    for attempt in range(retries + 1):
        try:
            if _http_once(url, partial, size=size, timeout_s=timeout_s, progress=progress):
                return
        except _TRANSIENT as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            if attempt == retries:
                raise DownloadError(f"{url}: failed after {retries + 1} attempts "
                                    f"(download.retries={retries}): {err}") from err
            sleep(backoff_s * 2 ** attempt)
        else:
            if attempt == retries:
                raise DownloadError(f"{url}: transfer ended early {retries + 1} times "
                                    f"(download.retries={retries})")
            sleep(backoff_s * 2 ** attempt)


def _http_once(url: str, partial: Path, *, size: int, timeout_s: float, progress: bool) -> bool:
    """One request, resuming from what `partial` holds; True when the body was complete."""
    have = partial.stat().st_size if partial.is_file() else 0
    if size and have > size:
        partial.unlink()
        have = 0
    if size and have == size:
        return True
    request = urllib.request.Request(url, headers={"User-Agent": "ssmvae"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the file is already whole
            return True
        raise
    with response:
        resumed = response.status == 206
        if have and not resumed:  # the server ignored the Range header: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else (size or None)
        mode = "ab" if resumed else "wb"
        with partial.open(mode) as f, tqdm(total=total, initial=have, unit="B",
                                           unit_scale=True, disable=not progress,
                                           desc=Path(urllib.parse.urlsplit(url).path).name) as bar:
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
    got = partial.stat().st_size
    return total is None or got >= total


# --------------------------------------------------------------------------- extraction


def _member_target(root: Path, info: zipfile.ZipInfo, archive: Path) -> Path:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    mode = info.external_attr >> 16
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in pure.parts:
        raise ArchiveError(f"{archive}: member {name!r} points outside the target folder")
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{archive}: member {name!r} is a symbolic link")
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise ArchiveError(f"{archive}: member {name!r} points outside the target folder")
    return target


def extract_zip(archive: str | Path, target: str | Path) -> list[str]:
    """Unpack `archive` into `target`; return the top-level names it created.

    Everything is checked before anything is written, and the members are unpacked into a
    temporary folder that is moved into place only when all of them were read intact.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = target / ".extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    root = staging.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _member_target(root, info, archive)) for info in zf.infolist()]
            for info, dest in members:
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
        tops = sorted(p.name for p in staging.iterdir())
        for name in tops:
            final = target / name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(staging / name, final)
        return tops
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise ArchiveError(f"{archive}: truncated or corrupt zip archive ({err}); delete it "
                           "and download again") from err
    except FileNotFoundError as err:
        if not archive.is_file():
            raise ArchiveError(f"{archive}: archive not found") from err
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- the stage's work

MARKER = ".download.json"
TRIALS_FILE = "testinstance_ids.txt"


def _source_name(source: str) -> str:
    path = urllib.parse.urlsplit(source).path if is_url(source) else str(local_path(source))
    name = PurePosixPath(path.replace("\\", "/")).name
    if not name:
        raise DownloadError(f"{source}: the URL names no file")
    return name


def obtain(source: str, cache: Path, *, size: int, sha256: str, retries: int,
           timeout_s: float, backoff_s: float, progress: bool) -> Path:
    """The local file for `source`: downloaded into `cache`, or a local file used in place."""
    if is_url(source):
        dest = cache / _source_name(source)
        try:
            fetch(source, dest, size=size, sha256=sha256, retries=retries,
                  timeout_s=timeout_s, backoff_s=backoff_s, progress=progress)
        except DownloadError as err:
            raise DownloadError(f"{err}. Without network, fetch {source} on another machine "
                                f"and put it at {dest} (used as is), or give its local path "
                                "(download --url for the archive, --splits-url for the "
                                "trials file)") from err
        return dest
    path = local_path(source)
    if not path.is_file():
        raise DownloadError(f"{source}: file not found")
    got = path.stat().st_size
    if size and got != size:
        raise DownloadError(f"{source}: has {got} bytes, expected {size} (download.size)")
    if sha256 and file_sha256(path) != sha256.lower():
        raise DownloadError(f"{source}: SHA-256 differs from download.sha256")
    return path


def download_dataset(out: str | Path, *, url: str, splits_url: str, cache: str | Path,
                     size: int = 0, sha256: str = "", retries: int = 5, timeout_s: float = 60.0,
                     backoff_s: float = 1.0, progress: bool = True) -> dict[str, object]:
    """Fetch the archive and trials file, extract into `out`; a complete `out` is left alone.

    Returns what `out/.download.json` records: the archive's name and size, the folders it
    created, and whether anything was done.
    """
    out, cache = Path(out), Path(cache)
    options = dict(retries=retries, timeout_s=timeout_s, backoff_s=backoff_s, progress=progress)
    archive = obtain(url, cache, size=size, sha256=sha256, **options)  # type: ignore[arg-type]
    trials = obtain(splits_url, cache, size=0, sha256="", **options)  # type: ignore[arg-type]
    record: dict[str, object] = {"archive": archive.name, "size": archive.stat().st_size}
    marker = out / MARKER
    previous = _read_marker(marker)
    done = (previous is not None and all(previous.get(k) == v for k, v in record.items())
            and all((out / str(name)).exists() for name in previous.get("folders", [])))
    if done and (out / TRIALS_FILE).is_file():
        return {**previous, "changed": False}  # type: ignore[dict-item]
    marker.unlink(missing_ok=True)
    record["folders"] = extract_zip(archive, out)
    shutil.copyfile(trials, out / TRIALS_FILE)
    marker.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return {**record, "changed": True}


def _read_marker(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
