"""50 certificates bound to one nginx target: exactly one `nginx -t` and one reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.conftest import deploy, issue, make_target
from tests.integration.servers import (
    Site,
    count_lines,
    counting_command,
    require_binary,
    served_fingerprint,
    start_nginx,
    wait_for,
    wait_served,
    write_pair,
)

N = 50


def test_fifty_certificates_one_validate_one_reload(tmp_path: Path, stop_later: Any) -> None:
    require_binary("nginx")
    certs = tmp_path / "certs"
    names = [f"site{i:02d}" for i in range(N)]
    old = {name: issue(name) for name in names}
    for name, dep in old.items():
        write_pair(dep, certs / f"{name}.crt", certs / f"{name}.key")
    sites = [Site(f"{n}.example.test", certs / f"{n}.crt", certs / f"{n}.key") for n in names]
    server = stop_later(start_nginx(tmp_path / "nginx", sites))
    bin_dir = tmp_path / "bin"
    validate, validate_count = counting_command(bin_dir, "validate", server.validate_argv())
    reload, reload_count = counting_command(bin_dir, "reload", server.reload_argv())
    target = make_target(
        tmp_path, "nginx",
        {"directory": str(certs), "validateCommand": validate, "reloadCommand": reload},
    )
    new = {name: issue(name, 2) for name in names}
    report = deploy(target, *new.values())
    assert report.changed and report.validated and report.reloaded
    assert count_lines(validate_count) == 1
    assert count_lines(reload_count) == 1
    assert server.reload_count() == 1  # nginx's own log agrees: one SIGHUP
    assert len(report.files) == 2 * N
    for name in (names[0], names[N // 2], names[-1]):
        assert wait_served(server.port, f"{name}.example.test", new[name].fingerprint)
    expected = {d.fingerprint for d in new.values()}
    # old workers may answer a handshake or two while they drain: poll (bounded)
    assert wait_for(
        lambda: {served_fingerprint(server.port, f"{n}.example.test") for n in names} == expected
    )
