"""Post-deploy verify: which leaf does an endpoint really serve?

We compare fingerprints, not trust: the handshake does not verify the chain or
the hostname (a private CA, an IP endpoint and a certificate not yet trusted by
the controller must all be checkable), it only reads the leaf the server picked
for the SNI name and hashes its DER.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Callable

from certgit.connectors.errors import VerifyMismatch
from certgit.connectors.model import VerifyConfig


def tls_leaf_fingerprint(
    host: str, port: int, server_name: str | None, *, timeout: float = 5.0
) -> str:
    """Handshake with `host:port` sending SNI `server_name`; return the served leaf's SHA-256 hex.

    Raises OSError (including ssl.SSLError and TimeoutError) when the endpoint
    cannot be reached or the handshake fails.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Fingerprint comparison is the check; chain/hostname validation would reject
    # exactly the private-CA and IP endpoints we must be able to verify.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # An IP literal is not a valid SNI value (RFC 6066 §3); send none then.
    sni = server_name or None
    connect_host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    with (
        socket.create_connection((connect_host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"{host}:{port} completed the handshake without a certificate")
    return hashlib.sha256(der).hexdigest()


def backoff_delays(config: VerifyConfig) -> list[float]:
    """The waits between attempts: initial_delay doubling, capped at max_delay."""
    delays: list[float] = []
    delay = max(config.initial_delay, 0.0)
    for _ in range(max(config.attempts - 1, 0)):
        delays.append(min(delay, config.max_delay))
        delay *= 2
    return delays


def verify_with_retry(
    get_fingerprint: Callable[[], str],
    expected: str,
    config: VerifyConfig,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Call `get_fingerprint` until it returns `expected`, at most `config.attempts` times.

    Waits initial_delay, doubling up to max_delay, between attempts. A connection
    or handshake error counts as a failed attempt. Raises VerifyMismatch naming
    the expected fingerprint and the last one seen (or the last error).
    """
    expected = expected.lower()
    attempts = max(config.attempts, 1)
    delays = backoff_delays(config)
    last_seen: str | None = None
    last_error: str | None = None
    for attempt in range(attempts):
        try:
            seen = get_fingerprint().lower()
        except (OSError, ValueError) as exc:
            # DeniedError is not caught: a missing grant is a config error, not a retry.
            last_error = f"{type(exc).__name__}: {exc}"
            last_seen = None
        else:
            if seen == expected:
                return
            last_seen, last_error = seen, None
        if attempt < attempts - 1:
            sleep(delays[attempt])
    endpoint = f"{config.host}:{config.port}"
    sni = f" (SNI {config.server_name})" if config.server_name else ""
    if last_seen is not None:
        what = f"it served {last_seen}"
    else:
        what = f"the last attempt failed: {last_error}"
    raise VerifyMismatch(
        f"verify {endpoint}{sni}: expected leaf {expected} after {attempts} attempt(s), "
        f"but {what}; check that the server uses the deployed files and that verify.endpoint "
        "points at it"
    )
