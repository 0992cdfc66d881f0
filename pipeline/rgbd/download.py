"""Fetch the dataset archive and the trials file; unpack the archive safely.

`fetch` takes an http(s) URL, a `file://` URL or a plain path (clusters without internet
copy the archive somewhere first). HTTP downloads go to `<name>.partial`, resume with a Range
request after a broken connection (and on the next run), retry with exponential back-off,
and are renamed into place only when the size (and the SHA-256, when given) match and the
content checks out (no HTML page; a readable zip, a parsable trials file). Cached files are
checked again on every run against these and against `<file>.source.json`, the record of the
URL each came from. `extract_zip` refuses members that would land outside the target folder
and swaps the new tree in whole. `download_dataset` writes the completion marker
`.download.json` last; `preprocess` reads no folder without it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.digest import file_sha256
from pipeline.errors import UserError
from pipeline.rgbd.layout import ARCHIVE_ROOT, MARKER, frame_file
from pipeline.rgbd.splits import check_trials, read_trials

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
          timeout_s: float = 60.0, backoff_s: float = 1.0, progress: bool = True,
          check: Callable[[Path], None] | None = None) -> bool:
    """Make `dest` a complete copy of `source`; False if it already was (nothing done).

    `dest` is reused only when it passes its checks on this run: `size`, `sha256`, `check`
    (the content, e.g. a readable zip) and its origin record `<dest>.source.json` (fetched
    from this `source`, unchanged since). A file placed by hand has no record and is used
    when the checks pass. Anything else is fetched again.
    """
    dest = Path(dest)
    if _reusable(source, dest, size=size, sha256=sha256, check=check):
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
    try:
        digest = _verify(source, partial, size=size, sha256=sha256, check=check)
    except UserError:
        partial.unlink(missing_ok=True)  # never resumed: its bytes are wrong, not short
        raise
    _write_origin(dest, source, partial, digest)
    os.replace(partial, dest)
    return True


def _origin_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".source.json")


def _write_origin(dest: Path, source: str, data: Path, digest: str, *,
                  by_hand: bool = False) -> None:
    record: dict[str, object] = {"source": source, "size": data.stat().st_size,
                                 "sha256": digest}
    if by_hand:
        record["placed_by_hand"] = True
    write_json(_origin_path(dest), record, sort_keys=True)


def read_origin(dest: Path) -> dict[str, object] | None:
    """What `<dest>.source.json` says about where `dest` came from; None if nothing."""
    return _read_json(_origin_path(dest))


def _reusable(source: str, dest: Path, *, size: int, sha256: str,
              check: Callable[[Path], None] | None) -> bool:
    if not dest.is_file():
        return False
    try:
        digest = _verify(source, dest, size=size, sha256=sha256, check=check)
    except UserError as err:
        print(f"{dest}: fails its checks, fetching again ({err})", file=sys.stderr)
        return False
    origin = read_origin(dest)
    if origin is None or origin.get("sha256") != digest:
        # No record, or the file was replaced since: placed by hand, as the README allows.
        _write_origin(dest, source, dest, digest, by_hand=True)
        return True
    if origin.get("source") != source:
        print(f"{dest}: came from {origin.get('source')}, now wanted from {source}; "
              "fetching again", file=sys.stderr)
        return False
    return True


def _verify(source: str, data: Path, *, size: int, sha256: str,
            check: Callable[[Path], None] | None = None) -> str:
    """`data`'s SHA-256; `DownloadError` (or `check`'s error) unless it is what `source` is."""
    got = data.stat().st_size
    if size and got != size:
        raise DownloadError(f"{source}: got {got} bytes, expected {size} (download.size)")
    digest = file_sha256(data)
    if sha256 and digest != sha256.lower():
        raise DownloadError(f"{source}: SHA-256 is {digest}, expected {sha256} "
                            "(download.sha256)")
    with data.open("rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise DownloadError(f"{source}: got an HTML page, not the file (a login, error or "
                            "moved page?); check the URL")
    if check is not None:
        check(data)
    return digest


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


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
        if response.headers.get_content_type() == "text/html":
            raise DownloadError(f"{url}: the server sent an HTML page (Content-Type "
                                "text/html), not the file; check the URL")
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


def _check_members(members: list[tuple[zipfile.ZipInfo, Path]], archive: Path) -> None:
    """Refuse a name given twice, and a file that is also a folder of another member."""
    files: dict[Path, str] = {}
    for info, dest in members:
        if not info.is_dir():
            if dest in files:
                raise ArchiveError(f"{archive}: member {info.filename!r} appears twice")
            files[dest] = info.filename
    for info, dest in members:
        for parent in [dest, *dest.parents] if info.is_dir() else dest.parents:
            if parent in files:
                raise ArchiveError(f"{archive}: member {files[parent]!r} is a file, but "
                                   f"{info.filename!r} needs a folder of that name")


def extract_zip(archive: str | Path, target: str | Path) -> list[str]:
    """Unpack `archive` into `target`; return the top-level names it created.

    Everything is checked before anything is written. The members are unpacked into the
    hidden `target/.extracting/`; only when all were read intact is each old top-level folder
    moved aside into `target/.replaced/`, the new one moved into its place, and the old one
    deleted, so a kill at any point leaves either a whole old or a whole new tree at the
    visible names (and hidden folders are never read as data).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging, replaced = target / ".extracting", target / ".replaced"
    for leftover in (staging, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir()
    root = staging.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _member_target(root, info, archive)) for info in zf.infolist()]
            _check_members(members, archive)
            for info, dest in members:
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
        tops = sorted(p.name for p in staging.iterdir())
        replaced.mkdir()
        for name in tops:
            final = target / name
            if final.exists() or final.is_symlink():
                os.replace(final, replaced / name)
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
        shutil.rmtree(replaced, ignore_errors=True)


def zip_instances(archive: Path) -> set[str]:
    """The instances (`apple_1`) with at least one frame file in `archive`; checks it opens."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ArchiveError(f"{archive}: not a readable zip archive ({err})") from err
    instances = set()
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if parts[:1] == (ARCHIVE_ROOT,):
            parts = parts[1:]
        parsed = frame_file(parts)
        if parsed is not None:
            instances.add(parsed.instance)
    return instances


# --------------------------------------------------------------------------- the stage's work

TRIALS_FILE = "testinstance_ids.txt"


@dataclass(frozen=True)
class Obtained:
    """A file ready to use: where it is, what the marker records, whether this run fetched it."""

    path: Path
    record: dict[str, object]
    fetched: bool

    def discard(self) -> None:
        """Remove a file this run fetched into the cache (it failed a later check)."""
        if self.fetched:
            self.path.unlink(missing_ok=True)
            _origin_path(self.path).unlink(missing_ok=True)


def _source_name(source: str) -> str:
    path = urllib.parse.urlsplit(source).path if is_url(source) else str(local_path(source))
    name = PurePosixPath(path.replace("\\", "/")).name
    if not name:
        raise DownloadError(f"{source}: the URL names no file")
    return name


def obtain(source: str, cache: Path, *, size: int, sha256: str, retries: int,
           timeout_s: float, backoff_s: float, progress: bool,
           check: Callable[[Path], None] | None = None) -> Obtained:
    """The checked local file for `source`: fetched into `cache`, or a local file in place."""
    if is_url(source):
        dest = cache / _source_name(source)
        try:
            fetched = fetch(source, dest, size=size, sha256=sha256, retries=retries,
                            timeout_s=timeout_s, backoff_s=backoff_s, progress=progress,
                            check=check)
        except DownloadError as err:
            raise DownloadError(f"{err}. Without network, fetch {source} on another machine "
                                f"and put it at {dest} (used as is), or give its local path "
                                "(download --url for the archive, --splits-url for the "
                                "trials file)") from err
        origin = read_origin(dest) or {}
        return Obtained(dest, {"source": source, "file": str(dest), "size": origin.get("size"),
                               "sha256": origin.get("sha256")}, fetched)
    path = local_path(source)
    if not path.is_file():
        raise DownloadError(f"{source}: file not found")
    digest = _verify(source, path, size=size, sha256=sha256, check=check)
    return Obtained(path, {"source": source, "file": str(path), "size": path.stat().st_size,
                           "sha256": digest}, False)


def _check_trials_text(path: Path) -> None:
    """A trials file must parse (an HTML page or a cut body does not)."""
    read_trials(path)


def download_dataset(out: str | Path, *, url: str, splits_url: str, cache: str | Path,
                     size: int = 0, sha256: str = "", retries: int = 5, timeout_s: float = 60.0,
                     backoff_s: float = 1.0, progress: bool = True) -> dict[str, object]:
    """Fetch and check the archive and trials file, extract into `out`.

    `out/.download.json` (written last, atomically) records where each file came from, its
    size and SHA-256, and the folders extracted. A re-run re-extracts only when the archive's
    bytes differ from the recorded ones and re-copies the trials file only when its bytes do;
    the returned record adds `changed` (whether anything in `out` was rewritten).
    """
    out, cache = Path(out), Path(cache)
    options = dict(retries=retries, timeout_s=timeout_s, backoff_s=backoff_s, progress=progress)
    archive = obtain(url, cache, size=size, sha256=sha256,  # type: ignore[arg-type]
                     check=zip_instances, **options)
    trials = obtain(splits_url, cache, size=0, sha256="",  # type: ignore[arg-type]
                    check=_check_trials_text, **options)
    try:
        check_trials(read_trials(trials.path), zip_instances(archive.path),
                     source=str(trials.path), data=f"the archive {archive.path}")
    except UserError:
        trials.discard()
        raise
    marker = out / MARKER
    previous = _read_json(marker) or {}
    folders = previous.get("folders")
    same_tree = (_same_bytes(previous.get("archive"), archive.record)
                 and isinstance(folders, list) and all((out / str(f)).exists() for f in folders))
    same_trials = (_same_bytes(previous.get("trials"), trials.record)
                   and (out / TRIALS_FILE).is_file()
                   and file_sha256(out / TRIALS_FILE) == trials.record["sha256"])
    record = {"archive": archive.record, "trials": trials.record, "folders": folders}
    if same_tree and same_trials and previous == record:
        return {**record, "changed": False}
    marker.unlink(missing_ok=True)  # `out` is incomplete from here until the marker is back
    if not same_tree:
        try:
            record["folders"] = extract_zip(archive.path, out)
        except ArchiveError:
            archive.discard()
            raise
    if not same_trials:
        tmp = out / f".{TRIALS_FILE}.tmp"
        shutil.copyfile(trials.path, tmp)
        os.replace(tmp, out / TRIALS_FILE)
    write_json(marker, record, sort_keys=True)
    return {**record, "changed": not (same_tree and same_trials)}


def _same_bytes(recorded: object, current: dict[str, object]) -> bool:
    return (isinstance(recorded, dict) and recorded.get("sha256") == current["sha256"]
            and recorded.get("size") == current["size"])
