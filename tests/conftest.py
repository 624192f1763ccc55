"""Session-wide test setup: the site policy the suite runs under.

certgit's built-in site policy is deliberately narrow (state dir targets/,
the connectors' own commands, loopback). The suite writes targets under the
temporary directory and runs real servers with `-c`/`-f` config flags and
shell-script hooks, so it runs under a test site policy that allows exactly
that: writes under the temp root, programs under it, the servers' binaries
with any arguments, and /bin/sh. Tests of the defaults and of the attack
suite pass their own `--site-policy` (a flag beats this environment value)
or remove CERTGIT_SITE_POLICY.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Binaries the integration and e2e tests run as validate/reload commands.
_PROGRAMS = (
    "sh", "true", "false", "env", "nginx", "apachectl", "apache2ctl", "apache2", "haproxy",
    "caddy", "postfix", "doveconf", "doveadm", "python3",
)


def test_site_policy_text(hooks: str) -> str:
    """The permissive-for-tests site policy, as TOML: programs under `hooks` may run."""
    temp = os.path.realpath(tempfile.gettempdir())
    commands: list[dict[str, object]] = [{"under": hooks}]
    for name in _PROGRAMS:
        found = shutil.which(name)
        if found:
            commands.append({"prefix": [found]})
    # TOML inline tables; json.dumps gives valid TOML strings for these values
    rules = ", ".join(
        "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in rule.items()) + " }"
        for rule in commands
    )
    return (
        "# written by tests/conftest.py\n"
        "[paths]\n"
        f"allow = [{json.dumps(temp)}]\n"
        "[commands]\n"
        f"allow = [{rules}]\n"
        "[secrets]\n"
        'env = ["TEST_*", "CA_*"]\n'
        f"files = [{json.dumps(temp)}]\n"
    )


@pytest.fixture(scope="session")
def test_site_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("site") / "site.toml"
    # the session's base temp dir (0700, ours), not /tmp: a hook directory others can
    # write is refused by the site policy loader
    path.write_text(test_site_policy_text(os.path.realpath(tmp_path_factory.getbasetemp())))
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def _site_policy_for_tests(
    test_site_policy: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("CERTGIT_SITE_POLICY", str(test_site_policy))
    yield


@pytest.fixture(autouse=True)
def _certgit_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process CLI run earlier in the session points the `certgit` logger at its
    own stderr handler (no propagation, maybe -q's ERROR level): each test starts with
    certgit's records reaching the root logger, where caplog listens."""
    logger = logging.getLogger("certgit")
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
