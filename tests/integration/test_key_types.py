"""Which key types each real server serves: the evidence behind every connector's `accepted_keys`.

Per server and key type: a leaf of that type (from the conformance CA) is put
where the server reads it, the server is started (or reloaded), and a TLS
handshake on 127.0.0.1 must return exactly that leaf. A type the connector
does NOT list must really be refused (the server does not start, or does not
serve it), so the recorded data and the binaries cannot drift apart silently.

nginx, apache2, haproxy and caddy serve HTTPS; dovecot is checked through
the doveadm-server TLS listener (the one TLS service of dovecot-core, which
is all this machine installs; it uses the same `ssl_cert`/`ssl_key` as
imap/pop3), postfix through STARTTLS on a real `postfix start` master with
smtpd on a loopback port.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgit.connectors.sdk.base import KEY_TYPES
from certgit.connectors.sdk.conformance import conformance_ca
from certgit.connectors.sdk.preflight import key_type
from certgit.connectors.sdk.registry import load_connector
from tests.integration.servers import (
    Site,
    free_port,
    require_binary,
    served_fingerprint,
    start_apache,
    start_caddy,
    start_haproxy,
    start_nginx,
    wait_for,
)

SERVER_NAME = "keys.example.test"
SERVERS = ("nginx", "apache", "haproxy", "caddy", "dovecot", "postfix")
PEM = serialization.Encoding.PEM


class Leaf:
    """A leaf of one key type: fullchain and key PEM, and the leaf's SHA-256."""

    def __init__(self, kind: str) -> None:
        key = _generate(kind)
        ca = conformance_ca()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), False)
            .sign(ca.key, hashes.SHA256())
        )
        assert key_type(cert.public_key()) == kind
        self.kind = kind
        self.fullchain = cert.public_bytes(PEM) + ca.pem
        self.key = key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def write(self, directory: Path) -> tuple[Path, Path]:
        """{directory}/leaf.crt (fullchain) and leaf.key (0600)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "leaf.crt", directory / "leaf.key"
        cert.write_bytes(self.fullchain)
        key.write_bytes(self.key)
        key.chmod(0o600)
        return cert, key


def _generate(kind: str) -> Any:
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    algorithm, _, bits = kind.partition("-")
    if algorithm == "ECDSA":
        return ec.generate_private_key({256: ec.SECP256R1(), 384: ec.SECP384R1()}[int(bits)])
    return rsa.generate_private_key(public_exponent=65537, key_size=int(bits))


@cache
def leaf(kind: str) -> Leaf:
    return Leaf(kind)  # RSA-4096 takes a while: one per key type per session


# -- one function per server: start it with the leaf, return a fingerprint probe -----------

Probe = Callable[[], str]
Stop = Callable[[Any], Any]


def _https(port: int) -> Probe:
    return lambda: served_fingerprint(port, SERVER_NAME)


def serve_nginx(root: Path, item: Leaf, stop_later: Stop) -> Probe:
    require_binary("nginx")
    cert, key = item.write(root / "certs")
    server = stop_later(start_nginx(root / "nginx", [Site(SERVER_NAME, cert, key)]))
    return _https(server.port)


def serve_apache(root: Path, item: Leaf, stop_later: Stop) -> Probe:
    require_binary("apache2")
    cert, key = item.write(root / "certs")
    server = stop_later(start_apache(root / "apache", [Site(SERVER_NAME, cert, key)]))
    return _https(server.port)


def serve_haproxy(root: Path, item: Leaf, stop_later: Stop) -> Probe:
    require_binary("haproxy")
    combined = root / "certs" / "leaf.pem"
    combined.parent.mkdir(parents=True)
    combined.write_bytes(item.fullchain + item.key)
    server = stop_later(start_haproxy(root / "haproxy", combined))
    return _https(server.port)


def serve_caddy(root: Path, item: Leaf, stop_later: Stop) -> Probe:
    require_binary("caddy")
    cert, key = item.write(root / "certs")
    server = stop_later(start_caddy(root / "caddy", [Site(SERVER_NAME, cert, key)]))
    return _https(server.port)


class Dovecot:
    """`dovecot -c CONF`: no mail protocols, doveadm-server on a loopback TLS port."""

    def __init__(self, root: Path, cert: Path, key: Path) -> None:
        self.root, self.port = root, free_port()
        self.conf = root / "dovecot.conf"
        (root / "run").mkdir()
        (root / "state").mkdir()
        self.conf.write_text(
            f"""protocols = none
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
doveadm_password = certgit-test
service doveadm {{
  inet_listener {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
}}
"""
        )

    def start(self) -> Dovecot:
        # no pipes: the daemonised master would hold them open
        subprocess.run(
            [require_binary("dovecot"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False,
        )
        return self

    def stop(self) -> None:
        pid_file = self.root / "run" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        os.kill(pid, 15)
        wait_for(lambda: not pid_file.exists(), timeout=10)


def serve_dovecot(root: Path, item: Leaf, stop_later: Stop) -> Probe:
    require_binary("dovecot")
    if os.geteuid() != 0:
        pytest.skip("dovecot's master drops privileges: run as root (CI does)")
    base = _traversable_dir("certgit-dovecot-")
    cert, key = item.write(base / "certs")
    server = Dovecot(base, cert, key)
    stop_later(_Cleanup(server, base))
    server.start()
    return _https(server.port)


def _traversable_dir(prefix: str) -> Path:
    """A fresh directory under the system temp dir, mode 0755.

    The servers' unprivileged processes (dovenull, postfix) open paths in it by
    their full name, which pytest's 0700 tmp_path parents would refuse.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


class _Cleanup:
    def __init__(self, server: Any, directory: Path) -> None:
        self.server, self.directory = server, directory

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Postfix:
    """A `postfix -c DIR start` master (own queue) with smtpd on a loopback port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.confdir = root / "conf"
        self.certs = root / "certs"
        for sub in ("conf", "queue", "data"):
            (root / sub).mkdir()
        (root / "queue").chmod(0o755)  # postsuper scans it as mail_owner
        shutil.chown(root / "data", "postfix")
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        lines = [line for line in master if not line.startswith("smtp ") or " inet " not in line]
        lines.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
        (self.confdir / "master.cf").write_text("\n".join(lines) + "\n")

    def configure(self, item: Leaf) -> None:
        item.write(self.certs)
        (self.confdir / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {self.root}/queue
data_directory = {self.root}/data
maillog_file_prefixes = {self.root}
maillog_file = {self.root}/postfix.log
inet_interfaces = loopback-only
mydestination =
local_recipient_maps =
alias_maps =
smtpd_tls_security_level = may
smtpd_tls_chain_files = {self.certs}/leaf.key, {self.certs}/leaf.crt
"""
        )
        # Postfix waits ~2 s for a main.cf modified in the last seconds: it is complete.
        old = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.confdir / name, (old, old))

    def postfix(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [require_binary("postfix"), "-c", str(self.confdir), *argv],
            capture_output=True, text=True, timeout=60, check=False,
        )

    def fingerprint(self) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as smtp:
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                return "no STARTTLS offered"
            smtp.starttls(context=context)
            der = smtp.sock.getpeercert(binary_form=True)
        assert der
        return hashlib.sha256(der).hexdigest()

    def stop(self) -> None:
        self.postfix("stop")


@pytest.fixture(scope="module")
def postfix_server() -> Iterator[Postfix]:
    require_binary("postfix")
    if os.geteuid() != 0:
        pytest.skip("`postfix start` is reserved for root (CI runs the tests as root)")
    root = _traversable_dir("certgit-postfix-")
    server = Postfix(root)
    server.configure(leaf("ECDSA-256"))
    try:
        started = server.postfix("start")
        log = root / "postfix.log"
        assert started.returncode == 0, log.read_text()[-2000:] if log.exists() else started
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


SERVE = {
    "nginx": serve_nginx,
    "apache": serve_apache,
    "haproxy": serve_haproxy,
    "caddy": serve_caddy,
    "dovecot": serve_dovecot,
}


def _served(probe: Probe, expected: str, timeout: float) -> str | None:
    """The fingerprint last seen (None: no handshake), polling until it is `expected`."""
    seen: list[str | None] = [None]

    def check() -> bool:
        try:
            seen[0] = probe()
        except (OSError, ssl.SSLError, smtplib.SMTPException) as exc:
            seen[0] = None
            raise OSError(str(exc)) from None
        return seen[0] == expected

    wait_for(check, timeout=timeout, interval=0.1)
    return seen[0]


@pytest.mark.parametrize("kind", KEY_TYPES)
@pytest.mark.parametrize("server", SERVERS)
def test_server_serves_exactly_the_key_types_its_connector_accepts(
    server: str, kind: str, tmp_path: Path, stop_later: Stop, request: pytest.FixtureRequest
) -> None:
    accepted = kind in load_connector(server).accepted_keys  # type: ignore[attr-defined]
    item = leaf(kind)
    if server == "postfix":
        postfix: Postfix = request.getfixturevalue("postfix_server")
        postfix.configure(item)
        reloaded = postfix.postfix("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        probe: Probe = postfix.fingerprint
    else:
        try:
            probe = SERVE[server](tmp_path, item, stop_later)
        except RuntimeError as exc:  # the server refused to start with this key
            assert not accepted, f"{server} did not start with a {kind} key: {exc}"
            return
    served = _served(probe, item.fingerprint, timeout=10.0 if accepted else 3.0)
    if accepted:
        assert served == item.fingerprint, f"{server} with a {kind} leaf served {served}"
    else:
        assert served != item.fingerprint, (
            f"{server} serves {kind}: add it to the connector's accepted_keys"
        )
