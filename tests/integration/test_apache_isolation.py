"""Per-binding isolation against a real apache2 on loopback.

One Apache target, three certificates: `web` (ECDSA), `api` (RSA 2048) and
`weak`, whose new version has a 1024-bit RSA key. `apache2 -t` does not load
certificates and the graceful restart would refuse the weak key and stop
Apache, so the connector's preflight refuses it. The deploy leaves `weak` out
(DeployReport.failed says why), deploys the other two with one validate and
one reload, and Apache keeps serving `weak`'s old certificate throughout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import deploy, issue, make_target
from tests.integration.servers import (
    Site,
    count_lines,
    counting_command,
    require_binary,
    served_fingerprint,
    start_apache,
    wait_for,
    wait_served,
    write_apache_layout,
)

NAMES = ("web", "api", "weak")




def _files(directory: Path, name: str) -> list[Path]:
    return [
        directory / "certs" / f"{name}.crt",
        directory / "certs" / f"{name}.chain.pem",
        directory / "private" / f"{name}.key",
    ]


def _site(directory: Path, name: str) -> Site:
    crt, chain, key = _files(directory, name)
    return Site(f"{name}.example.test", crt, key, chain=chain)


def test_weak_binding_is_left_out_and_the_rest_deploys_with_one_reload(
    tmp_path: Path, stop_later: Any
) -> None:
    require_binary("apache2")
    ssl_dir = tmp_path / "ssl"
    # Seed loadable old versions of all three (the weak one's old key is fine: ECDSA).
    old = {"web": issue("web"), "api": issue("api", rsa_bits=2048), "weak": issue("weak")}
    for deployment in old.values():
        write_apache_layout(ssl_dir, deployment)
    seeded = {p: p.read_bytes() for name in NAMES for p in _files(ssl_dir, name)}
    server = stop_later(
        start_apache(tmp_path / "apache", [_site(ssl_dir, name) for name in NAMES])
    )
    pid = server.pid()
    assert pid is not None
    for name in NAMES:
        assert served_fingerprint(server.port, f"{name}.example.test") == old[name].fingerprint

    bin_dir = tmp_path / "bin"
    validate, validate_count = counting_command(bin_dir, "validate", server.validate_argv())
    reload, reload_count = counting_command(bin_dir, "reload", server.reload_argv())
    target = make_target(
        tmp_path,
        "apache",
        {"directory": str(ssl_dir), "validateCommand": validate, "reloadCommand": reload},
    )
    new = {
        "web": issue("web", 2),
        "api": issue("api", 2, rsa_bits=2048),
        "weak": issue("weak", 2, rsa_bits=1024),
    }
    report = deploy(target, new["web"], new["api"], new["weak"])

    # The weak binding is reported, not raised; the rest went ahead.
    assert set(report.failed) == {"weak"}
    assert "2048" in report.failed["weak"]
    assert "weak" in report.failed["weak"]
    assert (report.changed, report.validated, report.reloaded) == (True, True, True)
    assert set(report.fingerprints) == {"web", "api"}
    assert set(report.written) == {"web", "api"}
    assert not any("weak" in Path(p).name for p in report.files)

    # One validate, one reload: the graceful restart Apache itself logged agrees.
    assert count_lines(validate_count) == 1
    assert count_lines(reload_count) == 1
    assert wait_for(lambda: server.reload_count() == 1)

    # web and api serve their new certificates.
    for name in ("web", "api"):
        assert wait_served(server.port, f"{name}.example.test", new[name].fingerprint), name
        assert (ssl_dir / "certs" / f"{name}.crt").read_bytes() == new[name].cert_pem

    # weak: files byte-for-byte as seeded, old certificate still served.
    for path in _files(ssl_dir, "weak"):
        assert path.read_bytes() == seeded[path], path
    assert served_fingerprint(server.port, "weak.example.test") == old["weak"].fingerprint

    # Apache never went down: same parent, alive, nothing refused in its log.
    assert server.pid() == pid
    os.kill(pid, 0)  # raises ProcessLookupError if the parent is gone
    log = server.error_log.read_text(errors="replace")
    assert "key too small" not in log
    assert "caught SIGTERM" not in log
    for name in NAMES:
        expected = (new if name != "weak" else old)[name].fingerprint
        assert served_fingerprint(server.port, f"{name}.example.test") == expected


# -- the same through `certgit apply`: executor, outbox and state store ----------------------


def test_apply_records_the_weak_binding_as_failing_and_the_rest_as_deployed(
    tmp_path: Path, stop_later: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`certgit apply` on an Apache target: weak fails alone, web and api are recorded.

    certgit's own issuer never makes an RSA key below 2048 bits, so the local CA's key
    generator is patched to return a 1024-bit key for `weak` (which asks for RSA 3072).
    """
    import io
    import json
    import sqlite3
    from contextlib import closing

    from cryptography.hazmat.primitives.asymmetric import rsa

    import certgit.reconciler.issuers.local_ca as local_ca
    from certgit.reconciler.cli import main
    from tests.e2e.labs import ISSUER, certificate_yaml
    from tests.gitutil import commit_files, init_repo

    require_binary("apache2")
    for var in ("CERTGIT_REPO", "CERTGIT_REF", "CERTGIT_PATH", "CERTGIT_CONFIG",
                "CERTGIT_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    real_generate = local_ca.generate_private_key

    def weak_for_rsa_3072(spec: Any) -> Any:
        if spec.size == 3072:
            return rsa.generate_private_key(public_exponent=65537, key_size=1024)
        return real_generate(spec)

    monkeypatch.setattr(local_ca, "generate_private_key", weak_for_rsa_3072)

    ssl_dir = tmp_path / "ssl"
    placeholders = {name: issue(name) for name in NAMES}  # Apache needs files to start
    for deployment in placeholders.values():
        write_apache_layout(ssl_dir, deployment)
    seeded = {p: p.read_bytes() for p in _files(ssl_dir, "weak")}
    server = stop_later(
        start_apache(tmp_path / "apache", [_site(ssl_dir, name) for name in NAMES])
    )
    pid = server.pid()
    assert pid is not None
    bin_dir = tmp_path / "bin"
    validate, validate_count = counting_command(bin_dir, "validate", server.validate_argv())
    reload, reload_count = counting_command(bin_dir, "reload", server.reload_argv())

    repo_path, state = tmp_path / "desired", tmp_path / "state"
    target_yaml = (
        "apiVersion: certgit.dev/v1\nkind: Target\nmetadata: {name: web}\nspec:\n"
        "  type: apache\n  adopt: true\n  settings:\n"
        f"    directory: {ssl_dir}\n"
        f"    validateCommand: {json.dumps(validate)}\n"
        f"    reloadCommand: {json.dumps(reload)}\n"
    ).encode()
    commit_files(init_repo(repo_path), {
        "issuer.yaml": ISSUER,
        "target.yaml": target_yaml,
        "certs/web.yaml": certificate_yaml("web"),
        "certs/api.yaml": certificate_yaml(
            "api", extra="  key: {algorithm: RSA, size: 2048}\n"
        ),
        "certs/weak.yaml": certificate_yaml(
            "weak", extra="  key: {algorithm: RSA, size: 3072}\n"
        ),
    }, "three certificates on one apache target")

    def cli(*args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main([*args, "--repo", str(repo_path), "--state-dir", str(state)], out, err)
        return code, out.getvalue() + err.getvalue()

    code, out = cli("apply", "--as", "tester")
    assert code == 1, out  # one binding failed: the run is a failure
    assert count_lines(validate_count) == 1, out
    assert count_lines(reload_count) == 1, out
    assert wait_for(lambda: server.reload_count() == 1)

    with closing(sqlite3.connect(state / "state.db")) as db:
        rows = {
            cert: (fp, version, error)
            for cert, fp, version, error in db.execute(
                "SELECT certificate, fingerprint, version, last_error FROM deployments "
                "WHERE target = 'web'"
            )
        }
    for name in ("web", "api"):
        fp, version, error = rows[name]
        assert (version, error) == (1, None), rows[name]
        assert wait_served(server.port, f"{name}.example.test", fp), name
    assert rows["weak"][2] is not None and "2048" in rows["weak"][2], rows["weak"]

    code, status_out = cli("status", "--json")
    assert code == 0, status_out
    status = {
        b["certificate"]: b for b in json.loads(status_out)["bindings"] if b["target"] == "web"
    }
    assert status["weak"]["drift"] == "failing", status["weak"]
    assert "2048" in status["weak"]["reason"]
    assert {status[n]["drift"] for n in ("web", "api")} == {"in-sync"}, status

    for path in _files(ssl_dir, "weak"):
        assert path.read_bytes() == seeded[path], path
    assert served_fingerprint(server.port, "weak.example.test") == placeholders["weak"].fingerprint
    assert server.pid() == pid
    os.kill(pid, 0)
    assert "key too small" not in server.error_log.read_text(errors="replace")
