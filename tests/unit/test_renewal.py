"""The renewal window comes from a version's real lifetime, which its CA may cut short.

Regression: a duration longer than the CA's remaining life gave a leaf capped
at the CA's notAfter but a renewBefore computed from the uncapped duration, so
every apply re-issued and redeployed it. And `certgit validate` says so
beforehand, from the CA already in the state directory (creating nothing).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certgit.reconciler.cli import main
from certgit.reconciler.desired import load_directory
from certgit.reconciler.issuance import (
    Issuance,
    ca_passphrase,
    lifetime_warnings,
    needs_new_version,
    renewal_horizon,
)
from certgit.reconciler.issuers.local_ca import LocalCA
from certgit.reconciler.model import (
    Certificate,
    CertificateVersion,
    DesiredState,
    Issuer,
    RecordedState,
)
from certgit.reconciler.planner import diff
from certgit.reconciler.renewal import renew_before_for
from certgit.reconciler.store import Store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))
ENV = {"CERTGIT_MASTER_KEY": KEY.hex()}


def _version(not_before: datetime, not_after: datetime, issued_at: datetime | None = None):
    return CertificateVersion(
        certificate="web",
        version=1,
        fingerprint="ab" * 32,
        serial="1",
        not_before=not_before,
        not_after=not_after,
        spec_hash="x",
        issued_at=issued_at or not_before,
    )


# ----------------------------------------------------------------------------- renew_before_for


def test_explicit_renew_before_is_kept_when_the_version_can_honour_it() -> None:
    cert = Certificate(name="web", issuer_ref="ca", renew_before=timedelta(days=30))
    assert renew_before_for(cert, _version(NOW, NOW + timedelta(days=90))) == timedelta(days=30)


def test_percentage_applies_to_the_real_lifetime_not_the_duration() -> None:
    cert = Certificate(name="web", issuer_ref="ca", duration=timedelta(days=36500))
    capped = _version(NOW, NOW + timedelta(days=300))  # the CA had 300 days left
    assert cert.effective_renew_before() > timedelta(days=300)  # the old, looping window
    assert renew_before_for(cert, capped) == timedelta(days=99)  # 33% of 300d
    twenty = Certificate(
        name="web", issuer_ref="ca", duration=timedelta(days=36500), renew_before_percentage=20
    )
    assert renew_before_for(twenty, capped) == timedelta(days=60)


def test_renew_before_the_version_cannot_honour_falls_back_to_the_percentage() -> None:
    cert = Certificate(name="web", issuer_ref="ca", renew_before=timedelta(days=30))
    short = _version(NOW - timedelta(hours=1), NOW + timedelta(days=20), issued_at=NOW)
    window = renew_before_for(cert, short)
    assert window == (timedelta(days=20, hours=1)) * 33 / 100
    assert window < short.not_after - short.issued_at  # not due the moment it is issued
    # a renewBefore just under the validity left at issuance would be due at once, too
    edge = Certificate(name="web", issuer_ref="ca", renew_before=timedelta(days=20))
    assert renew_before_for(edge, short) < timedelta(days=20)


def test_window_never_exceeds_the_lifetime() -> None:
    cert = Certificate(name="web", issuer_ref="ca", renew_before_percentage=99)
    version = _version(NOW, NOW + timedelta(days=10))
    assert renew_before_for(cert, version) <= version.not_after - version.not_before
    inverted = _version(NOW, NOW - timedelta(days=1))  # nonsense data: no negative window
    assert renew_before_for(cert, inverted) == timedelta(0)


# ----------------------------------------------------------------------------- issuance + planner


def _repo(root: Path, spec: str, issuer_spec: str = "{type: local-ca}") -> DesiredState:
    root.mkdir(parents=True, exist_ok=True)
    (root / "all.yaml").write_text(
        "apiVersion: certgit.dev/v1\n"
        "kind: Issuer\n"
        "metadata: {name: ca}\n"
        f"spec: {issuer_spec}\n"
        "---\n"
        "apiVersion: certgit.dev/v1\n"
        "kind: Certificate\n"
        "metadata: {name: web}\n"
        "spec:\n"
        "  dnsNames: [a.example.com]\n"
        "  issuerRef: {name: ca}\n"
        f"{spec}"
    )
    return load_directory(root)


def _ca_in_state_dir(state_dir: Path, left: timedelta) -> LocalCA:
    """Create the state-dir CA of issuer `ca` so that it has `left` of its life at NOW."""
    created = NOW + left - timedelta(days=3650)  # the local CA lives 3650 days
    return LocalCA.load_or_create(
        state_dir / "ca" / "ca",
        issuer=Issuer(name="ca", type="local-ca"),
        passphrase=ca_passphrase(KEY),
        now=created,
        env=ENV,
    )


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "state", master_key=KEY)
    yield s
    s.close()


def test_hundred_year_duration_under_a_ten_year_ca_is_issued_once(
    store: Store, tmp_path: Path
) -> None:
    desired = _repo(tmp_path / "repo", "  duration: 36500d\n")
    issuance = Issuance(store, tmp_path / "state", env=ENV)
    first = issuance.issue(desired, "web", NOW)
    assert first.version is not None
    version = first.version
    ca = LocalCA.load_or_create(
        tmp_path / "state" / "ca" / "ca",
        issuer=desired.issuers["ca"],
        passphrase=ca_passphrase(KEY),
        now=NOW,
        env=ENV,
    )
    # the leaf stops with its CA, so its real lifetime is ~10 years, not 100
    assert version.not_after == ca.certificate.not_valid_after_utc
    cert = desired.certificates["web"]
    assert version.not_after - NOW <= cert.effective_renew_before()  # the bug's setting

    assert not needs_new_version(cert, version, NOW)
    assert not needs_new_version(cert, version, NOW + timedelta(days=365))
    assert issuance.issue(desired, "web", NOW + timedelta(minutes=1)).version is None
    assert [v.version for v in store.versions("web")] == [1]
    lifetime = version.not_after - version.not_before
    assert renewal_horizon(cert, version) == version.not_after - lifetime * 33 / 100

    recorded = RecordedState(versions={"web": tuple(store.versions("web"))})
    plan = diff(desired, recorded, {}, NOW + timedelta(minutes=1))
    assert plan.actions == ()
    assert plan.stable_until == renewal_horizon(cert, version)


def test_renew_before_longer_than_the_cas_remaining_life_does_not_loop(
    store: Store, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    ca = _ca_in_state_dir(state, timedelta(days=20))
    desired = _repo(tmp_path / "repo", "  duration: 90d\n  renewBefore: 30d\n")
    issuance = Issuance(store, state, env=ENV)
    version = issuance.issue(desired, "web", NOW).version
    assert version is not None
    assert version.not_after == ca.certificate.not_valid_after_utc == NOW + timedelta(days=20)
    cert = desired.certificates["web"]
    later = NOW + timedelta(minutes=5)
    assert not needs_new_version(cert, version, later)
    assert issuance.issue(desired, "web", later).version is None
    recorded = RecordedState(versions={"web": (version,)})
    assert [a.kind for a in diff(desired, recorded, {}, later).actions] == []
    # it still renews: once a third of its real lifetime is left
    due = NOW + timedelta(days=15)
    assert needs_new_version(cert, version, due)
    [renew] = diff(desired, recorded, {}, due).actions
    assert renew.kind == "renew"


# ----------------------------------------------------------------------------- validate warning


def _validate(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["validate", *args], out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CERTGIT_REPO", "CERTGIT_REF", "CERTGIT_PATH", "CERTGIT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CERTGIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


def _ca_left_now(state_dir: Path, left: timedelta) -> LocalCA:
    # validate reads the real clock: build the CA relative to it
    created = datetime.now(UTC) + left - timedelta(days=3650)
    return LocalCA.load_or_create(
        state_dir / "ca" / "ca",
        issuer=Issuer(name="ca", type="local-ca"),
        passphrase=ca_passphrase(KEY),
        now=created,
        env=ENV,
    )


@pytest.mark.usefixtures("clean_env")
def test_validate_warns_when_a_duration_outlives_the_existing_ca(tmp_path: Path) -> None:
    _ca_left_now(tmp_path / "state", timedelta(days=20, hours=12))
    _repo(tmp_path / "repo", "  duration: 90d\n")
    code, out, err = _validate(str(tmp_path / "repo"))
    assert code == 0 and out.startswith("valid:")
    [warning] = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning.startswith('warning: all.yaml:12:13: Certificate "web": duration 90d ')
    assert 'outlives the CA of issuer "ca" (20d left, until ' in warning


@pytest.mark.usefixtures("clean_env")
def test_validate_is_quiet_when_the_ca_outlives_the_duration(tmp_path: Path) -> None:
    _ca_left_now(tmp_path / "state", timedelta(days=400))
    _repo(tmp_path / "repo", "  duration: 90d\n")
    assert _validate(str(tmp_path / "repo")) == (
        0,
        "valid: 1 issuers, 1 certificates, 0 targets, 0 policies\n",
        "",
    )


@pytest.mark.usefixtures("clean_env")
def test_validate_without_a_ca_neither_warns_nor_creates_anything(tmp_path: Path) -> None:
    _repo(tmp_path / "repo", "  duration: 3650d\n")  # the site policy's default cap
    code, _out, err = _validate(str(tmp_path / "repo"))
    assert (code, err) == (0, "")
    assert not (tmp_path / "state").exists()


@pytest.mark.usefixtures("clean_env")
def test_validate_reads_a_ca_given_by_certificate_ref(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _ca_left_now(tmp_path / "elsewhere", timedelta(days=5))
    monkeypatch.setenv("UNIT_CA_PEM", ca.certificate_pem.decode())
    # the site policy lets secretRefs read exactly these variables
    (tmp_path / "site.toml").write_text('[secrets]\nenv = ["UNIT_CA_*"]\n')
    monkeypatch.setenv("CERTGIT_SITE_POLICY", str(tmp_path / "site.toml"))
    _repo(
        tmp_path / "repo",
        "  duration: 30d\n",
        issuer_spec="{type: local-ca, localCA: {certificateRef: {env: UNIT_CA_PEM}, "
        "keyRef: {env: UNIT_CA_KEY}}}",
    )
    code, _out, err = _validate(str(tmp_path / "repo"))
    assert code == 0
    assert 'Certificate "web": duration 30d outlives the CA of issuer "ca" (4d left' in err
    assert not (tmp_path / "state").exists()


def test_lifetime_warnings_name_the_source_without_a_reader(tmp_path: Path) -> None:
    _ca_in_state_dir(tmp_path / "state", timedelta(days=10))
    desired = _repo(tmp_path / "repo", "  duration: 90d\n")
    [warning] = lifetime_warnings(desired, tmp_path / "state", {}, NOW)
    assert warning.startswith('warning: all.yaml#1: Certificate "web": duration 90d ')
    assert "(10d left, until " in warning
    assert lifetime_warnings(desired, tmp_path / "nowhere", {}, NOW) == []
