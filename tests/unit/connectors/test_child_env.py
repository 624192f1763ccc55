"""Child processes get a scrubbed environment: passthrough names only, never CERTGIT_*."""

from __future__ import annotations

import pytest

from certgit.connectors.sdk.transport import DEFAULT_PASSTHROUGH, LocalTransport, scrub_env
from certgit.reconciler import sitepolicy


def _child_env(transport: LocalTransport, overlay: dict[str, str] | None = None) -> dict[str, str]:
    result = transport.run(["/usr/bin/env", "-0"], 10, overlay)
    assert result.ok, result.summary()
    return dict(item.split("=", 1) for item in result.stdout.split("\0") if item)


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTGIT_MASTER_KEY", "TOPSECRET-master")
    monkeypatch.setenv("CERTGIT_REPO", "/srv/desired")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "TOPSECRET-aws")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")


@pytest.mark.usefixtures("secrets_in_env")
def test_default_child_sees_path_and_locale_only() -> None:
    env = _child_env(LocalTransport())
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["LC_ALL"] == "C.UTF-8"
    assert not any(name.startswith("CERTGIT_") for name in env)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HOME" not in env


@pytest.mark.usefixtures("secrets_in_env")
def test_passthrough_widens_but_never_to_certgit_variables() -> None:
    env = _child_env(LocalTransport(passthrough=("*",)))
    assert env["AWS_SECRET_ACCESS_KEY"] == "TOPSECRET-aws"
    assert not any(name.startswith("CERTGIT_") for name in env)


@pytest.mark.usefixtures("secrets_in_env")
def test_the_callers_overlay_is_added_but_cannot_bring_certgit_variables() -> None:
    env = _child_env(
        LocalTransport(passthrough=()), {"NGINX_CONF": "/x", "CERTGIT_MASTER_KEY": "leak"}
    )
    assert env == {"NGINX_CONF": "/x"}


def test_scrub_env_is_the_same_function_in_the_site_policy() -> None:
    assert sitepolicy.scrub_env is scrub_env
    assert sitepolicy.DEFAULT_PASSTHROUGH == DEFAULT_PASSTHROUGH
    assert scrub_env({"LANG": "C", "LC_TIME": "C", "CERTGIT_X": "1", "HOME": "/"}, ("L*",)) == {
        "LANG": "C",
        "LC_TIME": "C",
    }
