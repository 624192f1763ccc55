"""Positive controls: the attacks' shapes inside the site policy are accepted and deployed.

Without these the attack suite could pass against a loader that refuses
everything. Same labs as the attacks (built-in defaults and the strict
policy), own instances: these tests move the good commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.conftest import (
    EXIT_OK,
    ISSUER,
    Lab,
    certificate_yaml,
    make_lab,
    target_yaml,
)


def _valid(lab: Lab, files: dict[str, str], what: str) -> None:
    lab.commit(files, what)
    try:
        v = lab.run("validate")
        assert v.code == EXIT_OK, f"{what}: {v.text}"
    finally:
        lab.restore_checkout(files)


def test_shapes_inside_the_policy_validate(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each is valid on its own (validated, not applied: they dial or read secrets)."""
    endpoint = "127.0.0.1:8443"  # the strict policy's one endpoint; loopback for the defaults
    web = target_yaml("web", lab.web_directory, spec=f"  verify: {{endpoint: '{endpoint}'}}\n")
    _valid(lab, {"targets/web.yaml": web}, "verify endpoint inside the policy")

    if lab.kind == "defaults":
        admin = target_yaml("edge", "", type_="caddy",
                            settings="    method: admin-api\n    adminEndpoint: '127.0.0.1:2019'\n")
        _valid(lab, {"targets/caddy.yaml": admin}, "Caddy admin API on loopback")
        nginx = target_yaml("web", "targets/web", type_="nginx",
                            settings="    validateCommand: [nginx, -t]\n")
        _valid(lab, {"targets/web.yaml": nginx}, "nginx's own validate command")
    else:
        monkeypatch.setenv("ALLOWED_SECRET_CA", "not read by validate")
        lab.secrets.joinpath("ca.pem").write_text("not read by validate\n")
        for ref in ("{env: ALLOWED_SECRET_CA}", f"{{file: {lab.secrets / 'ca.pem'}}}"):
            issuer = ISSUER.replace(
                "localCA: {commonName: attack suite CA}",
                f"localCA:\n    commonName: attack suite CA\n    certificateRef: {ref}\n"
                f"    keyRef: {ref}")
            _valid(lab, {"issuer.yaml": issuer}, f"secretRef {ref} inside the policy")
        limits = certificate_yaml(
            "www", dns=[f"n{i}.example.test" for i in range(5)],
            spec="  duration: 90d\n  key: {algorithm: ECDSA, size: 384}\n")
        _valid(lab, {"certs/www.yaml": limits}, "5 SANs, 90d, ECDSA-384: at the limits")
        more = {f"certs/zz{i}.yaml": certificate_yaml(f"zz{i}") for i in range(2)}
        _valid(lab, more, "3 Certificates: maxCertificates")


def test_targets_inside_the_policy_are_deployed(lab: Lab) -> None:
    """A new target under the root, one behind a symlink that stays inside the root, and
    (strict) the operator's hook as reloadCommand: applied, files written, hook run."""
    real = lab.root / "real"
    real.mkdir(exist_ok=True)
    alias = lab.root / "alias"
    alias.symlink_to(real)
    hook = lab.hooks / "reload-ok"
    hook.write_text(f"#!/bin/sh\ntouch {lab.sentinel('reload-ok')}\n")
    hook.chmod(0o755)
    relative = lab.kind == "defaults"
    settings = f"    reloadCommand: [{hook}]\n" if lab.kind == "strict" else ""
    files = {
        "targets/ok.yaml": target_yaml("ok", "targets/ok" if relative else str(lab.root / "ok"),
                                       settings=settings),
        "targets/alias.yaml": target_yaml("alias", "targets/alias" if relative else str(alias)),
        "certs/ok.yaml": certificate_yaml("ok", "ok", dns=["ok.example.test", "ok2.example.test"]),
        "certs/via.yaml": certificate_yaml("via", "alias"),
    }
    good = lab.commit(files, "inside the policy")
    a = lab.run("apply", "--as", "operator")
    assert a.code == EXIT_OK, a.text
    assert lab.source_state("last_applied_commit") == good
    for name in ("ok.crt", "ok.key", "ok.fullchain.pem"):
        assert (lab.root / "ok" / name).is_file(), name
    assert (real / "via.crt").is_file() and (real / "via.key").is_file()
    assert lab.sentinel("reload-ok").exists() == (lab.kind == "strict")
    s = lab.run("status")
    assert s.code == EXIT_OK and s.err == "", s.text


def test_the_sentinel_fires_when_a_policy_allows_the_command(
    tmp_path: Path, test_site_policy: Path
) -> None:
    """The attack suite's sentinel is real: the `sh -c 'touch SENTINEL'` reloadCommand of
    reload_command_sh_c, under the suite-wide TEST policy (which allows sh), runs."""
    from tests.security.test_attacks import ATTACKS

    lab = make_lab(tmp_path, "defaults")
    lab.policy = test_site_policy  # permissive: programs under the temp dir, sh, ...
    attack = ATTACKS["reload_command_sh_c"](lab)
    lab.commit(attack.files, "the attack, allowed this time")
    a = lab.run("apply", "--as", "operator")
    assert a.code == EXIT_OK, a.text
    assert list(attack.sentinels) and all(p.exists() for p in attack.sentinels)
