"""`certgit site show`: where the policy in force comes from and what it allows."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "reconciler/examples/site.toml"


def test_defaults_are_named_and_listed(cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CERTGIT_SITE_POLICY", raising=False)
    if Path("/etc/certgit/site.toml").exists():
        import pytest

        pytest.skip("/etc/certgit/site.toml exists on this machine: it would be in force")
    r = cli("site", "show")
    assert r.code == 0, r.err
    assert r.out.startswith("site policy: built-in defaults")
    assert f"{tmp_path / 'state' / 'targets'}  (the state directory's targets/)" in r.out
    assert "nginx -t; nginx -s reload  (nginx targets only)" in r.out
    assert "loopback (127.0.0.1, [::1], localhost), any port" in r.out
    assert "secretRefs may read: env none; files under none" in r.out
    assert not (tmp_path / "state").exists()  # a read-only command creates nothing


def test_a_policy_file_in_json_and_the_example(cli) -> None:
    r = cli("site", "show", "--json", "--site-policy", str(EXAMPLE))
    assert r.code == 0, r.err
    site = json.loads(r.out)["site"]
    assert site["source"] == str(EXAMPLE)
    assert site["limits"]["maxDuration"] == "825d"
    assert {"name": "web-production", "match": {"targets": ["web-1", "web-2"]}} in site[
        "approvals"
    ]
    assert site["commands"]["allow"][1] == "/usr/sbin/nginx -t -c /etc/nginx/nginx.conf"
    e = cli("site", "show", "--example")
    assert e.code == 0 and e.out == EXAMPLE.read_text()
    tomllib.loads(e.out)  # valid TOML as printed


def test_an_invalid_policy_is_an_error_for_every_command(
    cli, sample_git, tmp_path: Path
) -> None:
    _, repo = sample_git
    assert cli("apply", "--repo", str(repo)).code == 2  # a store, waiting for approvals
    bad = tmp_path / "site.toml"
    bad.write_text('[paths]\nallow = ["relative"]\n')
    bad.chmod(0o600)
    for args in (("site", "show"), ("status",), ("plan",), ("apply",), ("audit", "verify")):
        r = cli(*args, "--repo", str(repo), "--site-policy", str(bad))
        assert r.code == 1, (args, r.out, r.err)
        assert f"{bad}:2:1: paths.allow: 'relative' is not an absolute path" in r.err, r.err
