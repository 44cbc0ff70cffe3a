"""Importing audio from local paths and from a real HTTP server on 127.0.0.1: good files land
under a content-addressed name, every bad source is a typed error, and nothing is left behind."""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
import torch

from prefect_acestep.stages.audio import fetch_audio, import_audio, load_audio
from prefect_acestep.stages.errors import AudioError, AudioUnavailable, TransientError

SR = 48_000


def wav_bytes(seconds: float, rate: int = 44_100, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


GOOD = wav_bytes(0.5)
LONG = wav_bytes(3.0, rate=8000)
EMPTY = wav_bytes(0.0)
NOT_AUDIO = b"<html><body>404 but with status 200</body></html>\n" * 40
BIG_CHUNK = b"\0" * 65_536


class Handler(BaseHTTPRequestHandler):
    """Routes named after what they exercise; ``server.release`` ends the stalling ones early."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        if route in ("/good.wav", "/long.wav", "/empty.wav", "/page.wav"):
            body = {"/good.wav": GOOD, "/long.wav": LONG, "/empty.wav": EMPTY, "/page.wav": NOT_AUDIO}[route]
            self._send(200, body)
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/good.wav")
            self.end_headers()
        elif route == "/declared-huge.wav":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif route == "/endless.wav":  # no Content-Length: only the streaming count can stop it
            self.send_response(200)
            self.end_headers()
            self.wfile.write(GOOD[:44])
            try:
                while not self.server.release.is_set():
                    self.wfile.write(BIG_CHUNK)
            except OSError:
                pass
        elif route == "/stall.wav":  # headers, then silence
            self.send_response(200)
            self.end_headers()
            self.wfile.write(GOOD[:1000])
            self.wfile.flush()
            self.server.release.wait(10)
        elif route == "/drip.wav":  # a byte at a time: each read is quick, the whole is not
            self.send_response(200)
            self.end_headers()
            try:
                for byte in GOOD:
                    if self.server.release.wait(0.05):
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            except OSError:
                pass
        elif route == "/busy.wav":
            self._send(503, b"try later")
        else:
            self._send(404, b"no such thing")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch) -> None:
    """The test servers listen on 127.0.0.1, which a worker refuses unless its configuration allows
    it: these tests allow loopback explicitly, as a worker importing from its own host would."""
    monkeypatch.setenv("ACE_AUDIO_ALLOWED_NETWORKS", "127.0.0.0/8")
    monkeypatch.delenv("ACE_AUDIO_CROSS_HOST_REDIRECTS", raising=False)


def listing(directory) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


# --- from a URL --------------------------------------------------------------------------------


def test_fetch_good_url_lands_content_addressed_and_validated(server, tmp_path):
    dest = tmp_path / "store"
    path = fetch_audio(f"{server}/good.wav", dest)
    assert path.read_bytes() == GOOD
    assert path.name == hashlib.sha256(GOOD).hexdigest()[:32] + ".wav"
    assert listing(dest) == [path.name]
    assert load_audio(path).shape == (2, SR // 2)
    assert fetch_audio(f"{server}/good.wav", dest) == path  # a retry lands on the same file
    assert listing(dest) == [path.name]


def test_redirect_is_followed(server, tmp_path):
    assert fetch_audio(f"{server}/redirect", tmp_path).read_bytes() == GOOD


def test_import_from_url_returns_model_audio_and_keeps_nothing(server, tmp_path):
    audio = import_audio(f"{server}/good.wav", work_dir=tmp_path)
    assert audio.dtype == torch.float32 and audio.shape == (2, SR // 2)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("route", "kwargs", "error", "reason"),
    [
        ("/endless.wav", {"max_bytes": 300_000}, AudioError, "exceeds 300000 bytes"),
        ("/declared-huge.wav", {}, AudioError, "Content-Length"),
        ("/page.wav", {}, AudioError, "not a readable audio file"),
        ("/missing.wav", {}, AudioError, "HTTP 404"),
        ("/empty.wav", {}, AudioError, "contains no audio samples"),
        ("/long.wav", {"max_seconds": 2.0}, AudioError, r"is 3\.0 s long; at most 2 s"),
        ("/stall.wav", {"timeout": 0.3}, AudioUnavailable, "timed out"),
        ("/drip.wav", {"timeout": 5.0, "total_timeout": 0.4}, AudioUnavailable, "longer than 0.4 s"),
        ("/busy.wav", {}, AudioUnavailable, "HTTP 503"),
    ],
)
def test_bad_urls_are_typed_errors_and_leave_nothing(server, tmp_path, route, kwargs, error, reason):
    url = f"{server}{route}"
    dest, work = tmp_path / "store", tmp_path / "work"
    with pytest.raises(error, match=reason) as caught:
        fetch_audio(url, dest, **kwargs)
    assert url in str(caught.value)
    assert listing(dest) == []
    with pytest.raises(error, match=reason):
        import_audio(url, work_dir=work, **kwargs)
    assert listing(work) == []


def test_network_blips_are_retryable_and_refusals_are_not(server, tmp_path):
    with pytest.raises(TransientError):
        fetch_audio(f"{server}/stall.wav", tmp_path, timeout=0.3)
    with pytest.raises(AudioError) as caught:
        fetch_audio(f"{server}/missing.wav", tmp_path)
    assert not isinstance(caught.value, TransientError)


def test_unreachable_host_is_unavailable(tmp_path):
    probe = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens there now
    with pytest.raises(AudioUnavailable, match="connection failed"):
        fetch_audio(f"http://127.0.0.1:{port}/good.wav", tmp_path, timeout=2.0)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("source", ["ftp://example.org/a.wav", "file:///tmp/a.wav", "s3://bucket/a.wav"])
def test_other_schemes_are_refused(tmp_path, source):
    with pytest.raises(AudioError, match="unsupported scheme"):
        fetch_audio(source, tmp_path)
    with pytest.raises(AudioError, match="unsupported scheme"):
        import_audio(source)
    assert listing(tmp_path) == []


# --- from a local path -------------------------------------------------------------------------


def test_fetch_local_file_copies_and_converts_nothing_in_place(tmp_path):
    src = tmp_path / "in" / "take 1.flac"
    src.parent.mkdir()
    sf.write(src, np.zeros((4410, 1), dtype=np.float32), 44_100)
    dest = tmp_path / "store"
    path = fetch_audio(str(src), dest)
    assert path.read_bytes() == src.read_bytes() and path.suffix == ".flac"
    assert listing(dest) == [path.name]
    assert import_audio(src).shape == (2, SR // 10)


def test_bad_local_sources_are_typed_errors_and_leave_nothing(tmp_path):
    dest = tmp_path / "store"
    (tmp_path / "text.wav").write_bytes(NOT_AUDIO)
    (tmp_path / "big.wav").write_bytes(GOOD)
    cases = [
        (tmp_path / "absent.wav", {}, "no such file"),
        (tmp_path, {}, "not a regular file"),
        (tmp_path / "text.wav", {}, "not a readable audio file"),
        (tmp_path / "big.wav", {"max_bytes": 1000}, "at most 1000 bytes"),
    ]
    for source, kwargs, reason in cases:
        with pytest.raises(AudioError, match=reason):
            fetch_audio(source, dest, **kwargs)
        with pytest.raises(AudioError, match=reason):
            import_audio(str(source), **kwargs)
    assert listing(dest) == []
