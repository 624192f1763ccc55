"""The `apache` connector: leaf, chain and key files; `apachectl configtest`; graceful reload.

Defaults in Debian's layout, under certgit's own directory:
/etc/ssl/certgit/certs/{name}.crt and /etc/ssl/certgit/certs/{name}.chain.pem
(0644) for SSLCertificateFile / SSLCertificateChainFile, and
/etc/ssl/certgit/private/{name}.key (0600) for SSLCertificateKeyFile. The
directory is /etc/ssl/certgit with the file names relative to it, so one
grant covers both subdirectories (and never the system's /etc/ssl/certs).
A graceful restart that meets a bad certificate stops the parent process,
and `apachectl configtest` does NOT load certificates (it
passes a 1024-bit RSA key that the graceful restart then refuses with "ee key
too small", taking Apache down). So this connector's preflight also refuses
keys below OpenSSL 3's default security level (RSA < 2048 bits), before
anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from certgit.connectors.errors import PreflightFailed
from certgit.connectors.model import Deployment
from certgit.connectors.sdk.base import KEY_TYPES, FileConnector, file_roles
from certgit.connectors.sdk.staging import APACHE, ServerTest

MIN_RSA_BITS = 2048  # OpenSSL 3 security level 2, Debian's default


class ApacheConnector(FileConnector):
    """Apache httpd 2.4 with mod_ssl."""

    name: ClassVar[str] = "apache"
    # Every KEY_TYPES entry, Ed25519 included (an older note here said Apache refused it).
    # Checked against Apache 2.4.71 mod_ssl (OpenSSL 3.0.19) on Debian 12: each type's
    # leaf served over HTTPS
    # (tests/integration/test_key_types.py).
    accepted_keys: ClassVar[frozenset[str]] = frozenset(KEY_TYPES)
    roles: ClassVar[Mapping[str, str | None]] = file_roles(
        certificate="certs/{name}.crt", chain="certs/{name}.chain.pem", key="private/{name}.key"
    )
    # certgit's own subdirectory: /etc/ssl itself holds the system's trust store and keys
    default_directory: ClassVar[str | None] = "/etc/ssl/certgit"
    validate_command: ClassVar[tuple[str, ...] | None] = ("apachectl", "configtest")
    reload_command: ClassVar[tuple[str, ...] | None] = ("apachectl", "graceful")
    config_test: ClassVar[ServerTest | None] = APACHE

    def preflight(self, deployment: Deployment) -> None:
        """The SDK preflight, plus a key-size floor that configtest cannot check."""
        super().preflight(deployment)
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = x509.load_pem_x509_certificate(deployment.cert_pem).public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise PreflightFailed(
                f"certificate {deployment.certificate}: RSA key of {key.key_size} bits is below "
                f"{MIN_RSA_BITS}; mod_ssl would refuse it on the graceful restart and stop "
                "Apache (configtest does not load certificates). Reissue with RSA >= 2048 "
                "or ECDSA"
            )
