"""Corpus loading (fastlstm.charlm.data): the default corpus's download path on loopback (a local
http.server on 127.0.0.1), checksums, atomic caching, offline errors; reading user files with
clear errors; the vocabulary and the held-out split.
"""

import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fastlstm import _config
from fastlstm.charlm import data

SMALL = b"First Witch. When shall we three meet againe?\nIn Thunder, Lightning, or in Raine?\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server in a thread: ``server.files`` maps paths to bodies, ``server.hits`` logs."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"/macbeth.txt": SMALL}
    httpd.hits = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def small_corpus(monkeypatch, tmp_path, server):
    """FASTLSTM_DATA -> an empty folder, the URL -> the local server, the checksum -> SMALL's."""
    folder = tmp_path / "data"
    monkeypatch.setenv(_config.DATA_ENV, str(folder))
    monkeypatch.setenv(_config.MACBETH_URL_ENV, server.url + "/macbeth.txt")
    monkeypatch.setattr(data, "MACBETH_SHA256", hashlib.sha256(SMALL).hexdigest())
    return folder


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, as offline
    return f"http://127.0.0.1:{port}/macbeth.txt"


def leftovers(folder):
    return [p.name for p in Path(folder).iterdir() if p.name != data.MACBETH_FILENAME] if Path(folder).exists() else []


# ----------------------------------------------------------------------------- download
def test_download_verifies_and_caches_atomically(small_corpus, server):
    path = data.fetch_macbeth()
    assert path == small_corpus / "macbeth.txt"
    assert path.read_bytes() == SMALL
    assert server.hits == ["/macbeth.txt"]
    assert leftovers(small_corpus) == []  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o666 & ~data._umask()  # not mkstemp's 0600
    # cached: a second call does not download again
    assert data.fetch_macbeth() == path
    assert server.hits == ["/macbeth.txt"]
    text, source = data.load_corpus(None)
    assert text == SMALL.decode() and source == "macbeth"


def test_wrong_checksum_is_rejected_and_not_cached(small_corpus, server, monkeypatch):
    monkeypatch.setattr(data, "MACBETH_SHA256", "0" * 64)
    with pytest.raises(data.DataError, match="sha256.*not cached"):
        data.fetch_macbeth()
    assert server.hits == ["/macbeth.txt"]
    assert not (small_corpus / "macbeth.txt").exists()
    assert leftovers(small_corpus) == []


def test_cached_file_with_wrong_checksum_is_replaced(small_corpus, server):
    small_corpus.mkdir(parents=True)
    (small_corpus / "macbeth.txt").write_bytes(b"something else")
    path = data.fetch_macbeth()
    assert path.read_bytes() == SMALL
    assert server.hits == ["/macbeth.txt"]


def test_offline_error_says_how_to_pass_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv(_config.DATA_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setenv(_config.MACBETH_URL_ENV, closed_port_url())
    with pytest.raises(data.DataError) as e:
        data.fetch_macbeth(timeout=5)
    msg = str(e.value)
    assert "--text" in msg and "offline" in msg and "\n" not in msg
    assert not (tmp_path / "nowhere" / "macbeth.txt").exists()


def test_http_error_is_a_data_error(small_corpus, server, monkeypatch):
    monkeypatch.setenv(_config.MACBETH_URL_ENV, server.url + "/missing.txt")
    with pytest.raises(data.DataError, match="--text"):
        data.fetch_macbeth()
    assert not (small_corpus / "macbeth.txt").exists()


def test_failed_write_leaves_nothing(small_corpus, server, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(data.os, "replace", broken_replace)
    with pytest.raises(data.DataError, match="cannot cache"):
        data.fetch_macbeth()
    assert not (small_corpus / "macbeth.txt").exists()
    assert leftovers(small_corpus) == []


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(_config.DATA_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.data_dir() == tmp_path / ".cache" / "fastlstm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.data_dir() == tmp_path / "xdg" / "fastlstm"
    monkeypatch.setenv(_config.DATA_ENV, str(tmp_path / "d"))
    assert data.data_dir() == tmp_path / "d"


def shared_data_dir():
    """The project's shared data folder (as CI's FASTLSTM_DATA), or None."""
    env = os.environ.get(_config.DATA_ENV)
    for folder in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "data"]:
        if (folder / data.MACBETH_FILENAME).is_file():
            return folder
    return None


@pytest.mark.skipif(shared_data_dir() is None, reason="the Macbeth corpus is not in the data folder here")
def test_real_corpus_is_found_without_download(monkeypatch):
    folder = shared_data_dir()
    monkeypatch.setenv(_config.DATA_ENV, str(folder))
    monkeypatch.setenv(_config.MACBETH_URL_ENV, closed_port_url())  # a download would fail
    path = data.fetch_macbeth()
    assert path == folder / "macbeth.txt"
    text, _ = data.load_corpus(None)
    assert len(text) == 100_351
    assert len(data.Vocab.from_text(text)) == 67
    assert len(data.Vocab.from_text(text.lower())) == 45


# ----------------------------------------------------------------------------- user files
def test_read_text_errors(tmp_path):
    with pytest.raises(data.DataError, match="does not exist.*--text"):
        data.read_text(tmp_path / "missing.txt")
    with pytest.raises(data.DataError, match="folder"):
        data.read_text(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(data.DataError, match="empty"):
        data.read_text(tmp_path / "empty.txt")
    (tmp_path / "bin.dat").write_bytes(b"abc\x00\x01\x02def")
    with pytest.raises(data.DataError, match="binary"):
        data.read_text(tmp_path / "bin.dat")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(data.DataError, match="not valid utf-8.*--encoding"):
        data.read_text(tmp_path / "latin.txt")
    assert data.read_text(tmp_path / "latin.txt", "latin-1") == "caf\xe9 cr\xe8me\n"
    with pytest.raises(data.DataError, match="unknown encoding"):
        data.read_text(tmp_path / "latin.txt", "no-such-codec")


def test_read_text_utf8_and_bom(tmp_path):
    (tmp_path / "u.txt").write_bytes("\ufeffh\xe9llo \U0001F600\n".encode("utf-8"))
    assert data.read_text(tmp_path / "u.txt") == "h\xe9llo \U0001F600\n"


# ----------------------------------------------------------------------------- vocabulary
def test_vocab_round_trip_and_unknown():
    text = "to be, or not to be \U0001F600\u00e9"
    v = data.Vocab.from_text(text)
    assert v.chars == sorted(set(text))
    ids = v.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert v.decode(ids) == text
    assert v.unknown("tbz!") == ["!", "z"]
    with pytest.raises(KeyError):
        v.encode("zz")
    ascii_v = data.Vocab.from_text("abc\n")
    assert list(ascii_v.encode("cab\n")) == [3, 1, 2, 0]
    with pytest.raises(KeyError):
        ascii_v.encode("abd")


def test_split_holds_out_the_last_tenth():
    ids = np.arange(1000)
    train, val = data.split_train_val(ids)
    assert len(train) == 900 and len(val) == 100
    assert train[-1] == 899 and val[0] == 900
