"""fetch: download over HTTP (loopback only), resume, checksum, unpack the official layout."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from build_models import data as D
from build_models import fetch as F
from tests.build_models.pets import make_pets, make_tarballs


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single 'bytes=N-' ranges (enough to test resuming)."""

    ranges: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def send_head(self):
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not header or not path.is_file():
            return super().send_head()
        type(self).ranges.append(header)
        start = int(re.match(r"bytes=(\d+)-", header).group(1))
        size = path.stat().st_size
        if start >= size:
            self.send_error(416)
            return None
        handle = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return handle


@pytest.fixture
def server(tmp_path):
    """Serve tarballs in the official format on 127.0.0.1 (a free port), nowhere else."""
    src = make_pets(tmp_path / "src", trainval=5, test=2)
    served = tmp_path / "served"
    make_tarballs(src, served)
    RangeHandler.ranges = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(RangeHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, name="fetch-server", daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "dir": served}
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _sources(server, **override):
    out = []
    for name in ("images.tar.gz", "annotations.tar.gz"):
        sha = hashlib.sha256((server["dir"] / name).read_bytes()).hexdigest()
        out.append(F.Source(f"{server['url']}/{name}", sha256=override.get(name, sha)))
    return out


def test_fetch_downloads_checks_and_unpacks_official_layout(server, tmp_path):
    dest = tmp_path / "pets"
    report = F.fetch(dest, _sources(server), progress=False)
    assert report["layout_ok"]
    assert [f["unpacked"] for f in report["files"]] == [["images"], ["annotations"]]
    assert len(D.scan_split(dest, "trainval").pairs) == 5
    assert (dest / "fetch-report.json").is_file()


def test_fetch_resumes_a_partial_download(server, tmp_path):
    dest = tmp_path / "pets"
    blob = (server["dir"] / "images.tar.gz").read_bytes()
    (dest / "downloads").mkdir(parents=True)
    (dest / "downloads" / "images.tar.gz.part").write_bytes(blob[: len(blob) // 2])
    F.fetch(dest, _sources(server), progress=False)
    assert RangeHandler.ranges == [f"bytes={len(blob) // 2}-"]
    assert (dest / "downloads" / "images.tar.gz").read_bytes() == blob


def test_fetch_refuses_a_bad_checksum(server, tmp_path):
    dest = tmp_path / "pets"
    with pytest.raises(F.FetchError, match="sha256 .* != expected 0{64}"):
        F.fetch(dest, _sources(server, **{"images.tar.gz": "0" * 64}), progress=False)
    assert not (dest / "downloads" / "images.tar.gz").exists()
    assert not (dest / "images").exists()


def test_fetch_reports_an_unreachable_server(tmp_path):
    with pytest.raises(F.FetchError, match="HTTP 404|refused|offline"):
        F.fetch(tmp_path, [F.Source("http://127.0.0.1:9/images.tar.gz")], progress=False,
                timeout=5)


@pytest.mark.parametrize("data_filter", [True, False])
def test_unpack_refuses_a_symlink_member(tmp_path, monkeypatch, data_filter):
    data_filter = data_filter and hasattr(tarfile, "data_filter")
    monkeypatch.setattr(F, "_has_data_filter", lambda: data_filter)
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("images/escape")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)
    dest = tmp_path / "out"
    dest.mkdir()
    if data_filter:  # the stdlib "data" filter refuses the absolute link
        with pytest.raises(tarfile.TarError):
            F.unpack(archive, dest)
    else:
        with pytest.raises(F.FetchError, match="member 'images/escape' is a link"):
            F.unpack(archive, dest)
    assert not (dest / "images" / "escape").is_symlink()


def test_unpack_fallback_still_extracts_regular_files(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "_has_data_filter", lambda: False)
    archive = tmp_path / "ok.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("images/a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert F.unpack(archive, tmp_path / "out") == ["images"]
    assert (tmp_path / "out" / "images" / "a.txt").read_bytes() == b"hi"
