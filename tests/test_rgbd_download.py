"""Download and extraction, through the real HTTP code against a server on 127.0.0.1."""

import http.server
import io
import threading
import zipfile

import pytest

from pipeline.rgbd.download import (
    MARKER,
    ArchiveError,
    DownloadError,
    download_dataset,
    extract_zip,
    fetch,
)


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
