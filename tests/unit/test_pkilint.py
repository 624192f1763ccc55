"""Lint what the local CA issues with pkilint: RFC 5280 and the CA/B Forum TLS profile.

A private CA cannot meet every CA/B Forum requirement; the few findings that
cannot apply are filtered below BY EXACT CODE, each with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pkilint import finding_filter, loader
from pkilint.cabf import serverauth
from pkilint.cabf.serverauth import serverauth_constants
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity, ValidationResult

from certgit.reconciler.issuers.local_ca import LocalCA
from certgit.reconciler.model import Certificate, Issuer, KeyAlgorithm, KeySpec

# The real clock, on purpose: CA/B Forum rules take effect by date (e.g. the
# shrinking maximum validity), and a leaf issued today must pass today's rules.
NOW = datetime.now(UTC).replace(microsecond=0)

# Findings that cannot apply to a private CA, by exact code:
PRIVATE_CA_EXEMPT = frozenset(
    {
        # A private CA publishes no CRL and runs no OCSP responder: there is no
        # URL to put in CRLDistributionPoints / AIA-OCSP. Revocation is done by
        # redeploying (certgit rotates short-lived leaves instead).
        "cabf.serverauth.subscriber.revocation_information_absent",
        "msft.end_entity.revocation_information_absent",
        # No public URL serves the CA certificate (AIA caIssuers); certgit
        # deploys the chain alongside the leaf instead.
        "cabf.serverauth.subscriber.authority_info_access_extension_absent",
    }
)
# CA/B Forum allows only RSA and ECDSA subscriber keys; certgit offers Ed25519
# for targets that accept it (DESIGN.md §5), knowingly outside that profile.
ED25519_EXEMPT = frozenset({"cabf.serverauth.prohibited_subject_public_key_algorithm_encoding"})

FAILING = (ValidationFindingSeverity.FATAL, ValidationFindingSeverity.ERROR)

KEYS = {
    "ecdsa-p256": KeySpec(KeyAlgorithm.ECDSA, 256),
    "ecdsa-p384": KeySpec(KeyAlgorithm.ECDSA, 384),
    "rsa-2048": KeySpec(KeyAlgorithm.RSA, 2048),
    "ed25519": KeySpec(KeyAlgorithm.ED25519, None),
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    directory: Path = tmp_path_factory.mktemp("pkilint") / "ca"
    issuer = Issuer(name="internal", type="local-ca")
    return LocalCA.load_or_create(directory, issuer=issuer, passphrase=b"pw", now=NOW, env={})


def _load(pem: bytes) -> object:
    return loader.RFC5280CertificateDocumentLoader().load_pem_document(pem.decode(), "cert")


def _rfc5280_findings(pem: bytes) -> list[ValidationResult]:
    validator = certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )
    return validator.validate(_load(pem).root)  # type: ignore[attr-defined]


def _serverauth_findings(pem: bytes) -> list[ValidationResult]:
    cert_type = serverauth_constants.CertificateType.DV_FINAL_CERTIFICATE
    doc = _load(pem)
    # the leaf must be recognised as what we claim (DV policy OID, serverAuth EKU)
    assert serverauth.determine_certificate_type(doc) == cert_type
    validator = certificate.create_pkix_certificate_validator_container(
        serverauth.create_decoding_validators(),
        serverauth.create_validators(cert_type),
    )
    results = validator.validate(doc.root)  # type: ignore[attr-defined]
    # pkilint's own filter drops RFC 5280 findings the CA/B Forum profile supersedes
    filtered, _ = finding_filter.filter_results(
        serverauth.create_serverauth_finding_filters(cert_type), results
    )
    return list(filtered)


def _failures(results: list[ValidationResult], exempt: frozenset[str]) -> list[str]:
    return [
        f"{result.node.path}: {fd.finding.code} ({fd.finding.severity.name})"
        + (f": {fd.message}" if fd.message else "")
        for result in results
        for fd in result.finding_descriptions
        if fd.finding.severity in FAILING and fd.finding.code not in exempt
    ]


def _leaf_pem(ca: LocalCA, key: KeySpec) -> bytes:
    cert = Certificate(
        name="web",
        issuer_ref="internal",
        common_name="www.example.com",
        dns_names=("www.example.com", "example.com"),
        ip_addresses=("1.2.3.4",),
        key=key,
        duration=timedelta(days=90),
    )
    return ca.issue(cert, now=NOW).cert_pem


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
def test_leaf_passes_rfc5280_lints(ca: LocalCA, key: KeySpec) -> None:
    failures = _failures(_rfc5280_findings(_leaf_pem(ca, key)), frozenset())
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
def test_leaf_passes_cabf_serverauth_lints(ca: LocalCA, key: KeySpec) -> None:
    is_ed25519 = key.algorithm == KeyAlgorithm.ED25519
    exempt = PRIVATE_CA_EXEMPT | (ED25519_EXEMPT if is_ed25519 else frozenset())
    failures = _failures(_serverauth_findings(_leaf_pem(ca, key)), exempt)
    assert not failures, "\n".join(failures)


def test_cabf_exemptions_are_still_needed(ca: LocalCA) -> None:
    """If a filtered finding stops appearing, drop it from the list: filters must not rot."""
    codes = {
        fd.finding.code
        for result in _serverauth_findings(_leaf_pem(ca, KEYS["ecdsa-p256"]))
        for fd in result.finding_descriptions
    }
    assert codes >= PRIVATE_CA_EXEMPT


def test_empty_subject_leaf_passes_lints(ca: LocalCA) -> None:
    cert = Certificate(name="nocn", issuer_ref="internal", dns_names=("api.example.com",))
    pem = ca.issue(cert, now=NOW).cert_pem
    assert not _failures(_rfc5280_findings(pem), frozenset())
    assert not _failures(_serverauth_findings(pem), PRIVATE_CA_EXEMPT)


def test_ca_certificate_passes_rfc5280_lints(ca: LocalCA) -> None:
    failures = _failures(_rfc5280_findings(ca.certificate_pem), frozenset())
    assert not failures, "\n".join(failures)
