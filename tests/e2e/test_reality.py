"""Reconcile against reality, against a real nginx on loopback, through the CLI.

Each test walks an operator's flow and checks what an operator would: the
fingerprint nginx serves, the files on disk, the recorded state and versions.
"""

from __future__ import annotations

from tests.e2e.labs import NginxLab


def _converge(lab: NginxLab) -> None:
    r = lab.cli("apply", "--as", "tester")
    assert r.code == 0, r.out + r.err


def test_out_of_band_change_is_modified_then_repaired_without_issuing(nginx_lab) -> None:
    lab: NginxLab = nginx_lab()
    _converge(lab)
    fp_b, v_b = lab.deployed("b")
    assert lab.wait_served("b", fp_b)
    # Replace b's certificate file behind certgit's back (a's, so nginx still loads).
    (lab.certs / "b.crt").write_bytes((lab.certs / "a.crt").read_bytes())
    status = lab.status()
    assert status[("b", "web")]["drift"] == "modified"
    assert {status[(n, "web")]["drift"] for n in ("a", "c")} == {"in-sync"}
    plan = lab.cli("plan", "--detailed-exitcode")
    assert plan.code == 2 and "b -> web" in plan.out and "modified" in plan.out
    assert "a -> web" not in plan.out
    reloads = lab.reloads()
    _converge(lab)
    assert lab.versions("b") == 1  # repaired with the recorded version: nothing issued
    assert lab.deployed("b") == (fp_b, v_b)
    assert lab.wait_served("b", fp_b)
    assert lab.reloads() == reloads + 1
    # A deleted key file is missing, repaired the same way.
    (lab.certs / "c.key").unlink()
    assert lab.status()[("c", "web")]["drift"] == "missing"
    _converge(lab)
    assert (lab.certs / "c.key").exists()
    assert lab.versions("c") == 1
    assert lab.cli("plan").code == 0


def test_observation_failure_is_unknown_not_in_sync(nginx_lab) -> None:
    """A file certgit cannot read proves nothing: `unknown` with the reason, no action."""
    lab: NginxLab = nginx_lab(("a",))
    _converge(lab)
    (lab.certs / "a.crt").unlink()
    (lab.certs / "a.crt").mkdir()  # unreadable as a file, even for root
    row = lab.status()[("a", "web")]
    assert row["drift"] == "unknown", row
    assert "could not observe" in row["reason"]
    plan = lab.cli("plan")
    assert "unknown" in plan.out and "Every binding is in sync" not in plan.out


def test_dry_run_on_a_broken_nginx_says_would_fail_and_touches_nothing(nginx_lab) -> None:
    """`apply --dry-run` runs nginx's config test on a staged copy: a broken server config
    is reported with nginx's own message, and no live file changes (mtime included)."""
    import json

    lab: NginxLab = nginx_lab(("a", "b"))
    # nginx's own config test (the lab's counting wrapper cannot be pointed at staged files)
    target = lab.target_yaml().decode().replace(
        json.dumps(lab.validate_argv), json.dumps(lab.server.validate_argv())
    )
    lab.commit({"target.yaml": target.encode()}, "validate with nginx -t itself")
    _converge(lab)
    (lab.certs / "b.crt").write_bytes((lab.certs / "a.crt").read_bytes())  # needs a repair
    lab.server.write_config(extra="    bogus_directive on;")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in lab.certs.iterdir()}
    reloads, validates = lab.reloads(), lab.validates()
    hups = lab.server.reload_count()
    r = lab.cli("apply", "--dry-run")
    assert "would fail" in r.out, r.out + r.err
    assert "bogus_directive" in r.out
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in lab.certs.iterdir()}
    assert after == before
    assert (lab.reloads(), lab.validates()) == (reloads, validates)
    assert lab.server.reload_count() == hups  # nginx was never signalled


def test_dry_run_tests_the_config_even_before_the_new_certificate_is_issued(nginx_lab) -> None:
    """A SAN change needs a new certificate, which a dry run does not issue: the server's
    config test still runs (with the files in place) and a broken config would fail."""
    import json

    from tests.e2e.labs import certificate_yaml

    lab: NginxLab = nginx_lab(("a",))
    target = lab.target_yaml().decode().replace(
        json.dumps(lab.validate_argv), json.dumps(lab.server.validate_argv())
    )
    lab.commit({"target.yaml": target.encode()}, "validate with nginx -t itself")
    _converge(lab)
    lab.commit({"certs/a.yaml": certificate_yaml("a", dns=["a.example.test", "www.a.test"])},
               "a: add a SAN")
    lab.server.write_config(extra="    bogus_directive on;")
    r = lab.cli("apply", "--dry-run")
    assert r.code == 1, r.out + r.err
    assert "would issue a" in r.out and "would fail" in r.out and "bogus_directive" in r.out
    assert lab.versions("a") == 1  # a dry run issues nothing
    lab.server.write_config()
    r = lab.cli("apply", "--dry-run")
    assert r.code == 2 and "would fail" not in r.out, r.out


def test_a_server_serving_other_files_is_modified_not_in_sync(nginx_lab) -> None:
    """Files exactly as certgit wrote them, but nginx points elsewhere: the handshake on the
    verify endpoint shows it, and a redeploy is not proposed (it would change nothing)."""
    from tests.integration.conftest import issue
    from tests.integration.servers import Site, write_pair

    lab: NginxLab = nginx_lab(("a", "b"))
    _converge(lab)
    stray = issue("b.example.test", 9)
    write_pair(stray, lab.root / "stray.crt", lab.root / "stray.key")
    lab.server.sites = (
        lab.server.sites[0], Site("b.example.test", lab.root / "stray.crt", lab.root / "stray.key")
    )
    lab.server.write_config()
    import os
    import signal

    os.kill(lab.server.pid(), signal.SIGHUP)
    assert lab.wait_served("b", stray.fingerprint)
    status = lab.status()
    assert status[("b", "web")]["drift"] == "modified"
    assert "not using them" in status[("b", "web")]["reason"]
    assert status[("a", "web")]["drift"] == "in-sync"
    assert lab.cli("plan").code == 0  # shown, nothing to apply
    assert lab.cli("status", "--refresh=false").code == 0


def test_typos_are_errors_not_all_clear(nginx_lab) -> None:
    """A mistyped target in status/retry/release exits 1 and audits nothing; an apply that
    fell back to the last good commit exits 1 and says HEAD was not applied."""
    lab: NginxLab = nginx_lab(("a",))
    _converge(lab)
    before = len(lab.query("SELECT seq FROM audit_log"))
    for args in (("status", "--target", "wbe"), ("retry", "wbe"), ("release", "wbe"),
                 ("audit", "show", "--limit", "-1")):
        r = lab.cli(*args)
        assert r.code in (1, 64), (args, r.out, r.err)
    assert len(lab.query("SELECT seq FROM audit_log")) == before
    lab.commit({"certs/a.yaml": b"apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: "
                b"{name: a}\nspec: {dnsName: [a.example.test]}\n"}, "typo")
    r = lab.cli("apply")
    assert r.code == 1 and "HEAD was not applied" in r.out, r.out + r.err
