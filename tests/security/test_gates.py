"""Approval gates Git cannot remove by itself (issue 14, gates.py), through the real CLI.

The good commit has a Policy gating deploys to targets labelled env=production
(target `prod`, certificate `www`) and a Target `vault` with its own approval
hook (certificate `secret`); it is approved and applied. Each attack weakens a
gate and makes a risky change (a new SAN: a new certificate deployed to the
gated target), in one commit or two. The commit is valid Git may propose, so
`validate` passes; what must hold is that the risky change still waits:
`apply` exits 2, the gated target's files keep their bytes and mtime, the plan
carries a gated `gates` action and the deploy is gated by the gate in force.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gitutil import init_repo
from tests.security.conftest import (
    EXIT_CHANGES,
    EXIT_OK,
    ISSUER,
    Lab,
    certificate_yaml,
    skip_if_a_machine_policy,
    target_yaml,
)

POLICY = """\
apiVersion: certgit.dev/v1
kind: Policy
metadata: {name: production-gate}
spec:
  approvals:
    - name: changes
      match:
        targetLabels: {env: production}
        actions: [deploy, remove]
"""
PROD = target_yaml("prod", "targets/prod", labels="{env: production}")
VAULT = target_yaml(
    "vault", "targets/vault", spec="  approval: {required: true, actions: [deploy]}\n"
)
HELD = "still in force)"  # "(removed or changed ...; ...)" or "(no longer matched ...)"
RISKY_WWW = certificate_yaml("www", "prod", dns=["www.example.test", "evil.example.test"])
RISKY_SECRET = certificate_yaml("secret", "vault", dns=["secret.example.test", "evil.example.test"])


class GateLab(Lab):
    def base_files(self) -> dict[str, str]:
        return {
            "issuer.yaml": ISSUER,
            "policy.yaml": POLICY,
            "targets/prod.yaml": PROD,
            "targets/vault.yaml": VAULT,
            "certs/www.yaml": certificate_yaml("www", "prod"),
            "certs/secret.yaml": certificate_yaml("secret", "vault"),
        }

    def files_of(self, target: str) -> dict[str, tuple[str, int, int]]:
        top = str(self.state / "targets" / target)
        return {k: v for k, v in self.snapshot().items() if k.startswith(top + "/")}

    def plan(self) -> dict:
        p = self.run("plan", "--json")
        assert p.code == EXIT_OK, p.text
        return json.loads(p.out)

    def approve_all(self, reason: str) -> None:
        r = self.run("approve", self.plan()["hash"], "--reason", reason, "--as", "approver")
        assert r.code == EXIT_OK, r.text


@pytest.fixture
def gates(tmp_path: Path) -> GateLab:
    """The gated lab, approved and applied (a fresh one per test: approvals change state)."""
    skip_if_a_machine_policy("defaults")
    return gate_lab(GateLab(tmp_path, "defaults"))


def gate_lab(lab: GateLab) -> GateLab:
    for directory in (lab.outside, lab.sentinels, lab.hooks, lab.secrets, lab.root):
        directory.mkdir(parents=True, exist_ok=True)
    init_repo(lab.repo_path)
    lab.good = lab.commit(lab.base_files(), "gated desired state", on_good=False)
    first = lab.run("apply", "--as", "operator")
    assert first.code == EXIT_CHANGES, first.text  # the first deploys wait for approval
    assert not (lab.state / "targets" / "prod").exists()
    lab.approve_all("first deploy")
    a = lab.run("apply", "--as", "operator")
    assert a.code == EXIT_OK, a.text
    assert (lab.state / "targets" / "prod" / "www.crt").is_file()
    assert (lab.state / "targets" / "vault" / "secret.crt").is_file()
    return lab


def assert_held(lab: GateLab, target: str, certificate: str, gate: str) -> dict:
    """The risky deploy waits (gated by the gate in force), with a gated `gates` action;
    `apply` exits 2 and writes nothing on `target`."""
    before = lab.files_of(target)
    served = lab.fingerprint(lab.state / "targets" / target / f"{certificate}.crt")
    v = lab.run("validate")
    assert v.code == EXIT_OK, v.text  # Git may propose it; the gates dispose
    plan = lab.plan()
    kinds = {(a["kind"], a["certificate"], a["target"]): a for a in plan["actions"]}
    change = next(a for a in plan["actions"] if a["kind"] == "gates")
    assert change["gated"], change
    assert any(gate in line for line in change["changes"]), change
    deploy = kinds[("deploy", certificate, target)]
    assert deploy["gated"], deploy
    assert any(gate in g and HELD in g for g in deploy["gated_by"]), deploy
    for _ in range(2):
        a = lab.run("apply", "--as", "attacker")
        assert a.code == EXIT_CHANGES, a.text
        assert "waiting for approval" in a.out, a.out
    assert lab.files_of(target) == before
    assert lab.fingerprint(lab.state / "targets" / target / f"{certificate}.crt") == served
    return plan


def test_deleted_policy_with_a_risky_change(gates: GateLab) -> None:
    gates.commit({"policy.yaml": None, "certs/www.yaml": RISKY_WWW}, "drop the gate, deploy")
    assert_held(gates, "prod", "www", "policy production-gate/changes")
    # Approved, it goes ahead and the weaker gates take effect: the next change is not gated.
    gates.approve_all("reviewed: the gate goes and evil.example.test is ours")
    a = gates.run("apply", "--as", "operator")
    assert a.code == EXIT_OK, a.text
    assert "evil.example.test" in _sans(gates.state / "targets" / "prod" / "www.crt")
    gates.commit({"certs/www.yaml": certificate_yaml("www", "prod")}, "back", on_good=False)
    assert not any(a["gated"] for a in gates.plan()["actions"])
    assert gates.run("apply").code == EXIT_OK


def test_narrowed_policy_selector_with_a_risky_change(gates: GateLab) -> None:
    narrowed = POLICY.replace("{env: production}", "{env: production, tier: gold}")
    gates.commit({"policy.yaml": narrowed, "certs/www.yaml": RISKY_WWW}, "narrow the gate")
    assert_held(gates, "prod", "www", "policy production-gate/changes")


def test_policy_actions_narrowed_with_a_risky_change(gates: GateLab) -> None:
    narrowed = POLICY.replace("actions: [deploy, remove]", "actions: [remove]")
    gates.commit({"policy.yaml": narrowed, "certs/www.yaml": RISKY_WWW}, "only removals gated")
    assert_held(gates, "prod", "www", "policy production-gate/changes")


def test_site_approval_gate_cannot_be_removed_from_git(tmp_path: Path) -> None:
    """The site's own gate on prod: deleting every Git gate leaves it gating the deploy."""
    policy = tmp_path / "site.toml"
    policy.write_text(
        '[[approvals]]\nname = "site-prod"\n'
        '[approvals.match]\ntargets = ["prod"]\nactions = ["deploy"]\n'
    )
    policy.chmod(0o600)
    lab = GateLab(tmp_path, "defaults")  # built-in paths and commands, plus the site gate
    lab.policy = policy
    gate_lab(lab)
    before = lab.files_of("prod")
    without = target_yaml("prod", "targets/prod", labels="{env: staging}")
    lab.commit({"policy.yaml": None, "targets/prod.yaml": without, "certs/www.yaml": RISKY_WWW},
               "no Git gates left")
    deploy = next(a for a in lab.plan()["actions"]
                  if (a["kind"], a["target"]) == ("deploy", "prod"))
    assert deploy["gated"] and any("site-prod" in g for g in deploy["gated_by"]), deploy
    a = lab.run("apply", "--as", "attacker")
    assert a.code == EXIT_CHANGES, a.text
    assert lab.files_of("prod") == before


def test_site_approval_by_label_survives_relabelling(tmp_path: Path) -> None:
    """A site rule matching `env: production`: relabelling prod out of it in the same
    commit as a risky change keeps the site rule on prod (by name) until approved."""
    policy = tmp_path / "site.toml"
    policy.write_text(
        '[[approvals]]\nname = "site-prod"\n'
        '[approvals.match]\ntargetLabels = { env = "production" }\n'
    )
    policy.chmod(0o600)
    lab = GateLab(tmp_path, "defaults")
    lab.policy = policy
    gate_lab(lab)
    before = lab.files_of("prod")
    relabelled = target_yaml("prod", "targets/prod", labels="{env: staging}")
    lab.commit({"policy.yaml": None, "targets/prod.yaml": relabelled,
                "certs/www.yaml": RISKY_WWW}, "relabel out of the site rule")
    plan = lab.plan()
    deploy = next(a for a in plan["actions"] if (a["kind"], a["target"]) == ("deploy", "prod"))
    assert any(g.startswith("site site-prod for target prod") for g in deploy["gated_by"]), deploy
    change = next(a for a in plan["actions"] if a["kind"] == "gates")
    assert "~ site site-prod no longer matches target prod" in change["changes"], change
    a = lab.run("apply", "--as", "attacker")
    assert a.code == EXIT_CHANGES, a.text
    assert lab.files_of("prod") == before


def test_deleted_target_approval_hook_with_a_risky_change(gates: GateLab) -> None:
    gates.commit(
        {"targets/vault.yaml": target_yaml("vault", "targets/vault"),
         "certs/secret.yaml": RISKY_SECRET},
        "drop vault's approval hook",
    )
    assert_held(gates, "vault", "secret", "target vault approval")


def test_deleted_policy_then_the_risky_change_in_the_next_commit(gates: GateLab) -> None:
    gates.commit({"policy.yaml": None}, "drop the gate (nothing else)")
    first = gates.run("apply", "--as", "attacker")
    assert first.code == EXIT_CHANGES, first.text  # the gate change itself waits
    gates.commit({"certs/www.yaml": RISKY_WWW}, "a week later: deploy", on_good=False)
    assert_held(gates, "prod", "www", "policy production-gate/changes")


def test_policy_renamed_with_a_risky_change(gates: GateLab) -> None:
    """The same rule under another Policy name is a removal plus an addition: held."""
    renamed = POLICY.replace("production-gate", "prod-gate-v2").replace(
        "actions: [deploy, remove]", "actions: [remove]")
    gates.commit({"policy.yaml": renamed, "certs/www.yaml": RISKY_WWW}, "rename and narrow")
    assert_held(gates, "prod", "www", "policy production-gate/changes")


def test_relabelled_target_with_a_risky_change(gates: GateLab) -> None:
    relabelled = target_yaml("prod", "targets/prod", labels="{env: staging}")
    gates.commit({"targets/prod.yaml": relabelled, "certs/www.yaml": RISKY_WWW}, "relabel")
    assert_held(gates, "prod", "www", "policy production-gate/changes")


def _sans(path: Path) -> list[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)



def test_gated_directory_taken_over_by_a_new_target(gates: GateLab) -> None:
    sneaky = target_yaml("sneaky", "targets/prod")
    moved = certificate_yaml("www", "sneaky", dns=["www.example.test", "evil.example.test"],
                             binding="      adopt: true\n")
    before = gates.files_of("prod")
    gates.commit({"targets/prod.yaml": sneaky, "certs/www.yaml": moved}, "same files, new name")
    a = gates.run("apply", "--as", "attacker")
    assert a.code == EXIT_CHANGES, a.text
    assert gates.files_of("prod") == before
