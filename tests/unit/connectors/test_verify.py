"""Post-deploy verify against a real TLS server on 127.0.0.1 (stdlib ssl, test-CA certs)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from certgit.connectors.errors import VerifyMismatch
from certgit.connectors.model import VerifyConfig
from certgit.connectors.sdk.conformance import Bundle, make_bundle
from certgit.connectors.sdk.verify import backoff_delays, tls_leaf_fingerprint, verify_with_retry


def _context(bundle: Bundle, tmp_path: Path, label: str) -> ssl.SSLContext:
    cert = tmp_path / f"{label}.pem"
    key = tmp_path / f"{label}.key"
    cert.write_bytes(bundle.cert_pem + bundle.chain_pem)
    key.write_bytes(bundle.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


class TLSServer:
    """Serves one handshake per connection; the n-th connection gets sequence[min(n, last)].

    With `by_name`, the SNI name picks the context instead (sni_callback).
    """

    def __init__(
        self, sequence: Sequence[ssl.SSLContext], by_name: dict[str, ssl.SSLContext] | None = None
    ) -> None:
        self.sequence = list(sequence)
        self.by_name = by_name or {}
        self.handshakes = 0
        self.names: list[str | None] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        for ctx in self.sequence:
            ctx.sni_callback = self._pick_by_name
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _pick_by_name(self, sslsock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        self.names.append(name)
        if name in self.by_name:
            sslsock.context = self.by_name[name]

    def _serve(self) -> None:
        # bounded: at most 1200 polls of 0.1 s (two minutes), whatever happens
        for _ in range(1200):
            if self._stop.is_set():
                return
            try:
                conn, _addr = self._sock.accept()
            except TimeoutError:
                continue
            ctx = self.sequence[min(self.handshakes, len(self.sequence) - 1)]
            self.handshakes += 1
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    def __enter__(self) -> TLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture(scope="module")
def bundles() -> dict[str, Bundle]:
    return {
        "a": make_bundle("a.example.test"),
        "b": make_bundle("b.example.test"),
    }


@pytest.fixture
def contexts(bundles: dict[str, Bundle], tmp_path: Path) -> dict[str, ssl.SSLContext]:
    return {label: _context(b, tmp_path, label) for label, b in bundles.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_fingerprint_is_the_served_leaf(
    bundles: dict[str, Bundle], contexts: dict[str, ssl.SSLContext]
) -> None:
    with TLSServer([contexts["a"]]) as server:
        seen = tls_leaf_fingerprint("127.0.0.1", server.port, None, timeout=5)
    assert seen == bundles["a"].fingerprint
    assert seen != bundles["b"].fingerprint


def test_sni_selects_the_certificate(
    bundles: dict[str, Bundle], contexts: dict[str, ssl.SSLContext]
) -> None:
    by_name = {"a.example.test": contexts["a"], "b.example.test": contexts["b"]}
    with TLSServer([contexts["a"]], by_name=by_name) as server:
        b = tls_leaf_fingerprint("127.0.0.1", server.port, "b.example.test", timeout=5)
        a = tls_leaf_fingerprint("127.0.0.1", server.port, "a.example.test", timeout=5)
        default = tls_leaf_fingerprint("127.0.0.1", server.port, None, timeout=5)
    assert b == bundles["b"].fingerprint
    assert a == bundles["a"].fingerprint
    assert default == bundles["a"].fingerprint
    assert server.names == ["b.example.test", "a.example.test", None]


def test_retry_then_success(
    bundles: dict[str, Bundle], contexts: dict[str, ssl.SSLContext]
) -> None:
    sleeps = Sleeps()
    with TLSServer([contexts["a"], contexts["b"]]) as server:
        config = VerifyConfig(host="127.0.0.1", port=server.port, attempts=3)
        verify_with_retry(
            lambda: tls_leaf_fingerprint("127.0.0.1", server.port, None, timeout=5),
            bundles["b"].fingerprint,
            config,
            sleep=sleeps,
        )
        handshakes = server.handshakes
    assert handshakes == 2  # the old leaf once, then the new one
    assert sleeps.delays == [1.0]


def test_mismatch_after_all_attempts_names_both_fingerprints(
    bundles: dict[str, Bundle], contexts: dict[str, ssl.SSLContext]
) -> None:
    sleeps = Sleeps()
    with TLSServer([contexts["a"]]) as server:
        config = VerifyConfig(
            host="127.0.0.1", port=server.port, attempts=4, initial_delay=1.0, max_delay=3.0
        )
        with pytest.raises(VerifyMismatch) as caught:
            verify_with_retry(
                lambda: tls_leaf_fingerprint("127.0.0.1", server.port, None, timeout=5),
                bundles["b"].fingerprint,
                config,
                sleep=sleeps,
            )
        handshakes = server.handshakes
    assert handshakes == 4
    assert sleeps.delays == [1.0, 2.0, 3.0]  # doubling, capped at max_delay
    message = str(caught.value)
    assert bundles["b"].fingerprint in message
    assert bundles["a"].fingerprint in message


def test_connection_refused_counts_as_failed_attempts() -> None:
    port = _free_port()
    calls: list[int] = []
    sleeps = Sleeps()

    def probe() -> str:
        calls.append(1)
        return tls_leaf_fingerprint("127.0.0.1", port, None, timeout=2)

    config = VerifyConfig(host="127.0.0.1", port=port)
    with pytest.raises(VerifyMismatch) as caught:
        verify_with_retry(probe, "00" * 32, config, sleep=sleeps)
    assert len(calls) == 3  # the default attempts
    assert sleeps.delays == [1.0, 2.0]
    assert "ConnectionRefusedError" in str(caught.value)
    assert caught.value.rolled_back is True


def test_first_attempt_success_does_not_sleep() -> None:
    sleeps = Sleeps()
    verify_with_retry(lambda: "AB" * 32, "ab" * 32, VerifyConfig("h", 1), sleep=sleeps)
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("attempts", "initial", "cap", "expected"),
    [
        (3, 1.0, 16.0, [1.0, 2.0]),
        (7, 1.0, 16.0, [1.0, 2.0, 4.0, 8.0, 16.0, 16.0]),
        (1, 1.0, 16.0, []),
        (4, 0.5, 1.0, [0.5, 1.0, 1.0]),
    ],
)
def test_backoff_sequence(attempts: int, initial: float, cap: float, expected: list[float]) -> None:
    config = VerifyConfig("h", 1, attempts=attempts, initial_delay=initial, max_delay=cap)
    assert backoff_delays(config) == expected
    sleeps = Sleeps()
    with pytest.raises(VerifyMismatch):
        verify_with_retry(lambda: "ff" * 32, "00" * 32, config, sleep=sleeps)
    assert sleeps.delays == expected


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"TLS server threads still running: {leaked}"
