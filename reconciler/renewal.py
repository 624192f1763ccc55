"""When a certificate version is due for renewal: its renewal window, from its REAL lifetime.

A version's lifetime can be shorter than the Certificate's `duration`: a local
CA caps a leaf's notAfter at its own notAfter, and an ACME CA picks its own
validity. A window computed from `duration` alone can then be as long as the
whole version, which renews it again on every apply. So the window comes from
the version:

- `renewBefore`, when given and shorter than the version's validity left at
  issuance (else it would be due the moment it is issued);
- otherwise `renewBeforePercentage` (default 33%) of the version's lifetime,
  `not_after - not_before`.

Pure: no I/O, safe for the planner.
"""

from __future__ import annotations

from datetime import timedelta

from certgit.reconciler.model import Certificate, CertificateVersion

DEFAULT_RENEW_BEFORE_PERCENTAGE = 33


def lifetime(version: CertificateVersion) -> timedelta:
    """The version's real validity, notBefore to notAfter (never negative)."""
    return max(version.not_after - version.not_before, timedelta(0))


def renew_before_for(cert: Certificate, version: CertificateVersion) -> timedelta:
    """How long before `version.not_after` the version is due for renewal.

    Never longer than the version's lifetime, and an explicit renewBefore
    that the version cannot honour (as long as the validity it had when it
    was issued, or longer) falls back to the percentage of the lifetime.
    """
    real = lifetime(version)
    if cert.renew_before is not None:
        # not_before is backdated (an hour for the local CA): what counts is
        # what was left once the version existed.
        fresh = version.not_after - max(version.not_before, version.issued_at)
        if cert.renew_before < fresh:
            return max(cert.renew_before, timedelta(0))
    pct = cert.renew_before_percentage
    if pct is None:
        pct = DEFAULT_RENEW_BEFORE_PERCENTAGE
    return min(real * pct / 100, real)
