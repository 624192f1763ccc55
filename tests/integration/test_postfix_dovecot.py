"""postfix and dovecot at file level, with their real config checkers where they run here.

Dovecot: `doveconf -c CONF -n` (a test config in tmp_path) is the validate
step; it parses the config but does not open the `<file` certificates, so a
broken config is caught, a bad certificate only by the preflight. Postfix:
`postfix -c DIR check` refuses a config directory that the system main.cf does
not authorise, so the tests validate with `postconf -c DIR -n` (parses
main.cf) and stay at file level; no mail server is started.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from certgit.connectors.errors import ValidateFailed
from certgit.connectors.model import TargetSpec
from certgit.connectors.sdk.conformance import ConnectorConformance
from tests.integration.conftest import deploy, issue, make_target, sha256_file
from tests.integration.servers import require_binary


def _dovecot_conf(tmp_path: Path, certs: Path) -> Path:
    conf = tmp_path / "dovecot.conf"
    conf.write_text(
        f"protocols = imap\nbase_dir = {tmp_path}/run\nssl = required\n"
        f"ssl_cert = <{certs}/mail.crt\nssl_key = <{certs}/mail.key\n"
    )
    return conf


def test_dovecot_deploy_with_doveconf_validate(tmp_path: Path) -> None:
    doveconf = require_binary("doveconf")
    certs = tmp_path / "private"
    conf = _dovecot_conf(tmp_path, certs)
    target = make_target(
        tmp_path, "dovecot",
        {"directory": str(certs), "validateCommand": [doveconf, "-c", str(conf), "-n"],
         "reloadCommand": ["/bin/true"]},
    )
    mail = issue("mail")
    report = deploy(target, mail)
    assert report.validated and report.reloaded
    assert (certs / "mail.crt").read_bytes() == mail.fullchain_pem
    assert stat.S_IMODE((certs / "mail.key").stat().st_mode) == 0o600
    # a broken config: validate fails and the old files stay
    before = sha256_file(certs / "mail.crt")
    conf.write_text(conf.read_text() + "no_such_dovecot_setting = 1\n")
    with pytest.raises(ValidateFailed):
        deploy(target, issue("mail", 2))
    assert sha256_file(certs / "mail.crt") == before


def test_postfix_deploy_with_postconf_validate(tmp_path: Path) -> None:
    postconf = require_binary("postconf")
    certs = tmp_path / "certs"
    confdir = tmp_path / "postfix"
    confdir.mkdir()
    (confdir / "main.cf").write_text(
        f"smtpd_tls_chain_files = {certs}/mail.key, {certs}/mail.crt\n"
    )
    target = make_target(
        tmp_path, "postfix",
        {"directory": str(certs), "validateCommand": [postconf, "-c", str(confdir), "-n"],
         "reloadCommand": ["/bin/true"]},
    )
    mail = issue("mail")
    report = deploy(target, mail)
    assert report.validated and report.reloaded
    assert (certs / "mail.crt").read_bytes() == mail.fullchain_pem
    assert (certs / "mail.key").read_bytes() == mail.key_pem
    assert stat.S_IMODE((certs / "mail.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((certs / "mail.crt").stat().st_mode) == 0o644
    # a missing config directory: validate fails and nothing new stays on disk
    before = sha256_file(certs / "mail.crt")
    (confdir / "main.cf").unlink()
    confdir.rmdir()
    with pytest.raises(ValidateFailed):
        deploy(target, issue("mail", 2))
    assert sha256_file(certs / "mail.crt") == before


class TestPostfixConformance(ConnectorConformance):
    connector_name = "postfix"

    def make_target(self, tmp_path: Path) -> TargetSpec:
        return make_target(
            tmp_path, "postfix",
            {"directory": str(tmp_path / "certs"), "validateCommand": ["/bin/true"],
             "reloadCommand": ["/bin/true"]},
        )


class TestDovecotConformance(ConnectorConformance):
    connector_name = "dovecot"

    def make_target(self, tmp_path: Path) -> TargetSpec:
        return make_target(
            tmp_path, "dovecot",
            {"directory": str(tmp_path / "private"), "validateCommand": ["/bin/true"],
             "reloadCommand": ["/bin/true"]},
        )
