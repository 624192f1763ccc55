"""postfix and dovecot at file level, with their real config checkers.

Dovecot: `doveconf -c CONF -n` (a test config in tmp_path) is the validate
step; it parses the config but does not open the `<file` certificates, so a
broken config is caught, a bad certificate only by the preflight.

Postfix: the validate step is the real `postfix -c DIR check` on a config
directory in tmp_path. As root, `-c` needs no `alternate_config_directories`
in the default main.cf (that guard is for unprivileged callers, and `postfix`
itself is root-only). The test main.cf points `queue_directory` (which
`check` creates and chowns) and `data_directory` into the temp dir, and logs to
`maillog_file` there: postfix logs to syslog, and to stderr only on a tty.
`postfix check` parses main.cf/master.cf and checks the queue and owners; it
does not open the `smtpd_tls_chain_files`, so a bad certificate is caught by
the preflight. No mail server is started (smtpd needs no port to be tested
at file level), so these connectors stay at file level.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def postfix_queue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One queue directory for the module, built by the first `postfix check`."""
    require_binary("postfix")
    if os.geteuid() != 0:
        pytest.skip("`postfix check` is reserved for root (CI runs the tests as root)")
    queue = tmp_path_factory.mktemp("postfix-queue")
    # postsuper scans the queue as mail_owner (postfix) after a chdir: 0700 locks it out.
    queue.chmod(0o755)
    return queue


def postfix_config(tmp_path: Path, queue: Path, certs: Path) -> Path:
    """A Postfix config directory in tmp_path whose TLS files are the connector's."""
    confdir = tmp_path / "postfix"
    (tmp_path / "postfix-data").mkdir()
    confdir.mkdir()
    master = Path("/etc/postfix/master.cf")
    (confdir / "master.cf").write_text(
        master.read_text() if master.exists() else "smtp inet n - y - - smtpd\n"
    )
    (confdir / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        f"queue_directory = {queue}\n"
        f"data_directory = {tmp_path}/postfix-data\n"
        f"maillog_file_prefixes = {tmp_path}\n"
        f"maillog_file = {tmp_path}/postfix.log\n"
        f"smtpd_tls_chain_files = {certs}/mail.key, {certs}/mail.crt\n"
    )
    _backdate(confdir)
    return confdir


def _backdate(confdir: Path) -> None:
    # Postfix waits (~2 s, in 0.3 s steps) before reading a main.cf modified in the last
    # seconds, in case an editor is still writing it; these files are complete.
    old = time.time() - 60
    for name in ("main.cf", "master.cf"):
        os.utime(confdir / name, (old, old))


def test_postfix_deploy_with_postfix_check(tmp_path: Path, postfix_queue: Path) -> None:
    postfix = require_binary("postfix")
    certs = tmp_path / "certs"
    confdir = postfix_config(tmp_path, postfix_queue, certs)
    target = make_target(
        tmp_path, "postfix",
        {"directory": str(certs), "validateCommand": [postfix, "-c", str(confdir), "check"],
         "reloadCommand": ["/bin/true"]},
    )
    mail = issue("mail")
    report = deploy(target, mail)
    assert report.validated and report.reloaded
    assert (certs / "mail.crt").read_bytes() == mail.fullchain_pem
    assert (certs / "mail.key").read_bytes() == mail.key_pem
    assert stat.S_IMODE((certs / "mail.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((certs / "mail.crt").stat().st_mode) == 0o644
    # a broken main.cf: `postfix check` fails, the old files stay and no reload runs
    before = sha256_file(certs / "mail.crt")
    with (confdir / "main.cf").open("a") as main_cf:
        main_cf.write("this line has no equals sign\n")
    _backdate(confdir)
    with pytest.raises(ValidateFailed):
        deploy(target, issue("mail", 2))
    assert sha256_file(certs / "mail.crt") == before
    assert (certs / "mail.key").read_bytes() == mail.key_pem


class TestPostfixConformance(ConnectorConformance):
    """The conformance suite with the real `postfix check` as the validate step."""

    connector_name = "postfix"

    @pytest.fixture
    def target(self, tmp_path: Path, connector: Any, postfix_queue: Path) -> TargetSpec:
        postfix = require_binary("postfix")
        certs = tmp_path / "certs"
        confdir = postfix_config(tmp_path, postfix_queue, certs)
        target = make_target(
            tmp_path, "postfix",
            {"directory": str(certs), "validateCommand": [postfix, "-c", str(confdir), "check"],
             "reloadCommand": ["/bin/true"]},
        )
        return self.wrap_target(connector, target, tmp_path)


class TestDovecotConformance(ConnectorConformance):
    connector_name = "dovecot"

    def make_target(self, tmp_path: Path) -> TargetSpec:
        return make_target(
            tmp_path, "dovecot",
            {"directory": str(tmp_path / "private"), "validateCommand": ["/bin/true"],
             "reloadCommand": ["/bin/true"]},
        )
