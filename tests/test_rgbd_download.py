"""Download and extraction, through the real HTTP code against a server on 127.0.0.1."""

import hashlib
import http.server
import io
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from pipeline.__main__ import main as cli
from pipeline.errors import UserError
from pipeline.rgbd import download
from pipeline.rgbd.download import (
    MARKER,
    TRIALS_FILE,
    ArchiveError,
    DownloadError,
    download_dataset,
    extract_zip,
    fetch,
)
from pipeline.rgbd.layout import index_frames
from pipeline.rgbd.splits import TrialsError, format_trials, parse_trials


class Server:
    """Serves `payload` at /data.zip (and `add`ed files) with Range support; can cut a
    response half-way, leave out Content-Length or send another Content-Type."""

    def __init__(self, payload: bytes) -> None:
        self.files: dict[str, dict] = {}
        self.add("/data.zip", payload)
        self.cut_after: int | None = None  # bytes of the next response before hanging up
        self.requests: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path not in owner.files:
                    self.send_error(404)
                    return
                spec = owner.files[self.path]
                payload = spec["payload"]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                body = payload[start:]
                cut, owner.cut_after = owner.cut_after, None
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                if spec["length"]:
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", spec["type"])
                self.end_headers()
                sent = body[:cut] if cut is not None else body
                # Recorded before writing: the client may return before this thread goes on.
                owner.requests.append({"path": self.path, "range": rng, "sent": len(sent)})
                self.wfile.write(sent)
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.base}/data.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def payload(self) -> bytes:
        return self.files["/data.zip"]["payload"]

    def add(self, path: str, payload: bytes, *, length: bool = True,
            content_type: str = "application/octet-stream") -> str:
        """Serve `payload` at `path` (without Content-Length if `length` is False)."""
        self.files[path] = {"payload": payload, "length": length, "type": content_type}
        return f"{getattr(self, 'base', '')}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tiny_archive):
    s = Server(tiny_archive[0].read_bytes())
    yield s
    s.close()


def test_download_checks_size_and_does_nothing_when_present(server, tmp_path):
    dest = tmp_path / "data.zip"
    size = len(server.payload)
    assert fetch(server.url, dest, size=size, progress=False, timeout_s=5)
    assert dest.read_bytes() == server.payload
    assert not fetch(server.url, dest, size=size, progress=False, timeout_s=5)
    assert len(server.requests) == 1  # the second run sent no request


def test_interrupted_download_resumes_on_the_next_run(server, tmp_path):
    dest, size = tmp_path / "data.zip", len(server.payload)
    half = size // 2
    server.cut_after = half
    with pytest.raises(DownloadError, match=r"failed after 1 attempts|ended early"):
        fetch(server.url, dest, size=size, retries=0, backoff_s=0, progress=False, timeout_s=5)
    partial = tmp_path / "data.zip.partial"
    assert not dest.exists() and partial.stat().st_size == half
    assert fetch(server.url, dest, size=size, retries=0, progress=False, timeout_s=5)
    assert dest.read_bytes() == server.payload and not partial.exists()
    second = server.requests[-1]
    assert second["range"] == f"bytes={half}-"
    assert second["sent"] == size - half  # only the remainder travelled


def test_a_cut_is_retried_within_one_run(server, tmp_path):
    dest, size = tmp_path / "data.zip", len(server.payload)
    server.cut_after = 1000
    assert fetch(server.url, dest, size=size, retries=2, backoff_s=0, progress=False,
                 timeout_s=5)
    assert dest.read_bytes() == server.payload
    assert [r["range"] for r in server.requests] == [None, "bytes=1000-"]


def test_wrong_size_and_hash_and_missing_url_are_clear(server, tmp_path):
    with pytest.raises(DownloadError, match=r"expected 5 \(download.size\)"):
        fetch(server.url, tmp_path / "a.zip", size=5, retries=0, progress=False)
    with pytest.raises(DownloadError, match=r"download\.sha256"):
        fetch(server.url, tmp_path / "b.zip", sha256="0" * 64, progress=False)
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url.replace("data.zip", "nope.zip"), tmp_path / "c.zip", progress=False)
    assert not list(tmp_path.glob("*.zip*"))


def test_local_path_and_file_url_extract_once(tiny_archive, tmp_path):
    archive, trials = tiny_archive
    out = tmp_path / "raw"
    first = download_dataset(out, url=archive.as_uri(), splits_url=str(trials),
                             cache=tmp_path / "cache", progress=False)
    assert first["changed"] and first["folders"] == ["rgbd-dataset_eval"]
    assert (out / "testinstance_ids.txt").read_text() == trials.read_text()
    assert len(list((out / "rgbd-dataset_eval").rglob("*_depthcrop.png"))) == 18
    assert (out / MARKER).is_file() and not (tmp_path / "cache").exists()  # used in place
    again = download_dataset(out, url=str(archive), splits_url=str(trials),
                             cache=tmp_path / "cache", progress=False)
    assert not again["changed"]
    with pytest.raises(DownloadError, match="file not found"):
        download_dataset(out, url=str(tmp_path / "missing.zip"), splits_url=str(trials),
                         cache=tmp_path, progress=False)


def zip_with(name: str, *, link: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("rgbd-dataset_eval/ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = 0o120777 << 16
        zf.writestr(info, b"/etc/passwd" if link else b"evil")
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "link", "message"), [
    ("../escape.txt", False, "outside the target"),
    ("rgbd-dataset_eval/../../escape.txt", False, "outside the target"),
    ("/tmp/absolute.txt", False, "absolute path"),
    ("rgbd-dataset_eval/link", True, "symbolic link"),
])
def test_extraction_refuses_members_outside_the_target(tmp_path, name, link, message):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_with(name, link=link))
    target = tmp_path / "deep" / "target"
    with pytest.raises(ArchiveError, match=message):
        extract_zip(archive, target)
    assert not (tmp_path / "deep" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert list(target.iterdir()) == []  # nothing was written, not even the good member


def test_truncated_or_corrupt_archive_is_a_clear_error(tiny_archive, tmp_path):
    data = tiny_archive[0].read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_zip(truncated, tmp_path / "a")
    corrupt = bytearray(data)
    start = data.index(b"\x89PNG")  # inside the first stored PNG
    corrupt[start + 100: start + 110] = b"\x00" * 10
    (tmp_path / "corrupt.zip").write_bytes(bytes(corrupt))
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_zip(tmp_path / "corrupt.zip", tmp_path / "b")
    assert not (tmp_path / "b" / "rgbd-dataset_eval").exists()


def frame_count(archive: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        return sum(name.endswith("_depthcrop.png") for name in zf.namelist())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_changed_splits_url_is_fetched_again(server, tiny_archive, tmp_path):
    trials = tiny_archive[1]
    text_a = trials.read_text()
    text_b = format_trials({**parse_trials(text_a), 3: parse_trials(text_a)[1]})
    url_a = server.add("/a/testinstance_ids.txt", text_a.encode())
    url_b = server.add("/b/testinstance_ids.txt", text_b.encode())
    out, cache = tmp_path / "raw", tmp_path / "cache"
    download_dataset(out, url=server.url, splits_url=url_a, cache=cache, progress=False)
    second = download_dataset(out, url=server.url, splits_url=url_b, cache=cache,
                              progress=False)
    assert second["changed"] and (out / TRIALS_FILE).read_text() == text_b
    assert [r["path"] for r in server.requests].count("/data.zip") == 1  # not extracted again
    local = tmp_path / "mine.txt"  # and a local path in place of a URL
    local.write_text(text_a)
    download_dataset(out, url=server.url, splits_url=str(local), cache=cache, progress=False)
    assert (out / TRIALS_FILE).read_text() == text_a
    marker = json.loads((out / MARKER).read_text())
    assert marker["trials"] == {"source": str(local), "file": str(local),
                                "size": len(text_a.encode()), "sha256": sha256(text_a.encode())}
    assert marker["archive"]["source"] == server.url
    assert marker["archive"]["sha256"] == sha256(server.payload)


def test_a_cached_archive_placed_by_hand_is_checked(server, tiny_archive, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.zip").write_bytes(zip_with("rgbd-dataset_eval/stale.txt"))
    out = tmp_path / "raw"
    record = download_dataset(out, url=server.url, splits_url=str(tiny_archive[1]),
                              cache=cache, sha256=sha256(server.payload), progress=False)
    assert record["changed"] and (cache / "data.zip").read_bytes() == server.payload
    assert len(index_frames(out).frames) == frame_count(tiny_archive[0])
    # The right file placed by hand (no network needed) is used as is.
    shutil.rmtree(out)
    (cache / "data.zip.source.json").unlink()
    requests = len(server.requests)
    download_dataset(out, url=server.url, splits_url=str(tiny_archive[1]), cache=cache,
                     sha256=sha256(server.payload), progress=False)
    assert len(server.requests) == requests and (out / MARKER).is_file()


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream"])
def test_an_html_page_never_enters_the_cache(server, tiny_archive, tmp_path, content_type):
    page = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n"
    url = server.add("/page/data.zip", page, content_type=content_type)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="HTML page"):
        download_dataset(tmp_path / "raw", url=url, splits_url=str(tiny_archive[1]),
                         cache=cache, retries=0, progress=False)
    assert not list(cache.glob("data.zip*"))


def test_a_body_cut_short_without_length_is_never_complete(server, tiny_archive, tmp_path):
    payload = server.payload
    url = server.add("/plain/data.zip", payload[: len(payload) // 2], length=False)
    cache, out = tmp_path / "cache", tmp_path / "raw"
    with pytest.raises(UserError, match="zip archive"):
        download_dataset(out, url=url, splits_url=str(tiny_archive[1]), cache=cache,
                         retries=0, progress=False)
    assert not list(cache.glob("data.zip*")) and not (out / MARKER).exists()
    server.add("/plain/data.zip", payload, length=False)  # the next run gets it whole
    record = download_dataset(out, url=url, splits_url=str(tiny_archive[1]), cache=cache,
                              retries=0, progress=False)
    assert record["changed"] and (cache / "data.zip").read_bytes() == payload


def test_a_download_that_fails_extraction_is_removed(server, tiny_archive, tmp_path):
    corrupt = bytearray(server.payload)
    start = corrupt.index(b"\x89PNG")  # inside the first stored PNG: only the CRC tells
    corrupt[start + 100: start + 110] = b"\x00" * 10
    url = server.add("/bad/data.zip", bytes(corrupt))
    cache, out = tmp_path / "cache", tmp_path / "raw"
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        download_dataset(out, url=url, splits_url=str(tiny_archive[1]), cache=cache,
                         progress=False)
    assert not list(cache.glob("data.zip*")) and not (out / MARKER).exists()
    local = tmp_path / "mine.zip"  # a local file is the user's: reported, never deleted
    local.write_bytes(bytes(corrupt))
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        download_dataset(out, url=str(local), splits_url=str(tiny_archive[1]), cache=cache,
                         progress=False)
    assert local.read_bytes() == bytes(corrupt)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: {1: t[1][1:]}, r"trial 1 holds out 0 instances of '\w+' \(none\)"),
    (lambda t: {1: [*t[1], t[1][0][:-1] + "9"]}, r"trial 1 holds out \w+_9, absent from"),
    (lambda t: {1: t[1], 2: []}, "trial 2 lists no instance"),
])
def test_a_trials_file_that_does_not_fit_the_archive(server, tiny_archive, tmp_path, change,
                                                      message):
    text = format_trials(change(parse_trials(tiny_archive[1].read_text())))
    url = server.add("/bad/testinstance_ids.txt", text.encode())
    cache, out = tmp_path / "cache", tmp_path / "raw"
    with pytest.raises(TrialsError, match="testinstance_ids.txt: " + message):
        download_dataset(out, url=str(tiny_archive[0]), splits_url=url, cache=cache,
                         progress=False)
    assert not (cache / "testinstance_ids.txt").exists() and not (out / MARKER).exists()


@pytest.mark.parametrize("order", [("x", "x/y"), ("x/y", "x")])
def test_a_file_that_is_also_a_folder_is_refused(tmp_path, tiny_archive, capsys, order):
    archive = tmp_path / "clash.zip"
    with zipfile.ZipFile(archive, "w") as zf, zipfile.ZipFile(tiny_archive[0]) as tiny:
        for info in tiny.infolist():  # a whole data set, and the clash
            zf.writestr(info, tiny.read(info))
        for name in order:
            zf.writestr(f"rgbd-dataset_eval/{name}", b"data")
    with pytest.raises(ArchiveError, match=r"member 'rgbd-dataset_eval/x' is a file, but "
                                           r"'rgbd-dataset_eval/x/y' needs a folder"):
        extract_zip(archive, tmp_path / "a")
    assert list((tmp_path / "a").iterdir()) == []
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    code = cli(["download", "--params", str(tmp_path / "params.yaml"), "--url", str(archive),
                "--splits-url", str(tiny_archive[1]), "--out", str(tmp_path / "raw"),
                "--cache", str(tmp_path / "cache"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "clash.zip: member" in err


def test_a_kill_while_the_old_tree_is_deleted_leaves_a_whole_tree(tiny_archive, tmp_path,
                                                                   monkeypatch):
    archive, out = tiny_archive[0], tmp_path / "raw"
    extract_zip(archive, out)
    rmtree = shutil.rmtree

    def killed_half_way(path, *args, **kwargs):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if not files:
            return rmtree(path, *args, **kwargs)
        for f in files[: len(files) // 2]:
            f.unlink()
        raise KeyboardInterrupt  # stands for SIGKILL in the middle of the deletion

    monkeypatch.setattr(download.shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        extract_zip(archive, out)
    monkeypatch.undo()
    with zipfile.ZipFile(archive) as zf:  # the visible tree is whole, byte for byte
        for info in zf.infolist():
            if not info.is_dir():
                assert (out / info.filename).read_bytes() == zf.read(info), info.filename
    assert len(index_frames(out).frames) == frame_count(archive)
    extract_zip(archive, out)  # the next run clears what the kill left behind
    assert sorted(p.name for p in out.iterdir()) == ["rgbd-dataset_eval"]
