#!/usr/bin/env python3
"""Deploy N certificates to one real nginx: certgit's one transaction vs a certbot-style hook.

Starts nginx on 127.0.0.1 (config and files in a temp dir) with N TLS server
blocks, then measures, in the same run:

- certgit:  one ChangeSet of N new certificates through the nginx connector
            (preflight, atomic apply, one `nginx -t`, one reload)
- baseline: what certbot's deploy hooks do, per certificate: a shell hook that
            copies the two files into place and runs `nginx -s reload`

and prints wall time and reload count of each and the ratio. Both end only when
nginx serves every new certificate (checked by handshake), so an asynchronous
reload is not counted as done early.

    .venv/bin/python benchmarks/deploy_nginx.py [--certs 200]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import deploy, issue, make_target
from tests.integration.servers import (
    Site,
    count_lines,
    counting_command,
    served_fingerprint,
    start_nginx,
    wait_for,
    write_pair,
)


def all_served(port: int, expected: dict[str, str], timeout: float = 120.0) -> bool:
    """Wait until every server name serves its expected fingerprint."""
    return wait_for(
        lambda: all(served_fingerprint(port, n) == fp for n, fp in expected.items()),
        timeout=timeout, interval=0.05,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certs", type=int, default=200)
    args = parser.parse_args()
    n = args.certs
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        print("nginx is not installed (scripts/system-deps.sh installs it)")
        return 1
    with tempfile.TemporaryDirectory(prefix="certgit-bench-") as tmp:
        root = Path(tmp)
        certs = root / "certs"
        names = [f"site{i:04d}" for i in range(n)]
        print(f"issuing {3 * n} certificates ...", flush=True)
        v1 = {name: issue(name) for name in names}
        for name, dep in v1.items():
            write_pair(dep, certs / f"{name}.crt", certs / f"{name}.key")
        sites = [Site(f"{x}.example.test", certs / f"{x}.crt", certs / f"{x}.key") for x in names]
        server = start_nginx(root / "nginx", sites)
        try:
            # certgit: one ChangeSet, one validate, one reload
            validate, validate_count = counting_command(
                root / "bin", "validate", server.validate_argv()
            )
            reload, reload_count = counting_command(
                root / "bin", "reload", [*server.base_argv(), "-s", "reload"]
            )
            target = make_target(
                root, "nginx",
                {"directory": str(certs), "validateCommand": validate, "reloadCommand": reload},
            )
            v2 = {name: issue(name, 2) for name in names}
            v3 = {name: issue(name, 3) for name in names}
            start = time.perf_counter()
            deploy(target, *v2.values())
            want = {f"{x}.example.test": d.fingerprint for x, d in v2.items()}
            assert all_served(server.port, want), "nginx never served every new certificate"
            certgit_s = time.perf_counter() - start
            certgit_reloads = count_lines(reload_count)
            certgit_validates = count_lines(validate_count)

            # baseline: per certificate a deploy hook copies the files and reloads nginx
            staging = root / "staging"
            for name, dep in v3.items():
                write_pair(dep, staging / f"{name}.crt", staging / f"{name}.key")
            hook = root / "deploy-hook.sh"
            nginx = " ".join(server.base_argv())
            hook.write_text(
                "#!/bin/sh\nset -e\n"
                f'cp "$1.crt" {certs}/"$(basename "$1")".crt\n'
                f'cp "$1.key" {certs}/"$(basename "$1")".key\n'
                f"{nginx} -s reload\n"
            )
            hook.chmod(0o755)
            start = time.perf_counter()
            for name in names:
                subprocess.run([str(hook), str(staging / name)], check=True, timeout=120,
                               stderr=subprocess.DEVNULL)
            want = {f"{x}.example.test": d.fingerprint for x, d in v3.items()}
            assert all_served(server.port, want), "nginx never served every new certificate"
            baseline_s = time.perf_counter() - start
        finally:
            server.stop()
    print(f"N = {n} certificates, one nginx with {n} TLS server blocks")
    print(
        f"certgit : {certgit_s:8.2f} s   validates {certgit_validates}   reloads {certgit_reloads}"
    )
    print(f"baseline: {baseline_s:8.2f} s   reloads {n} (certbot-style deploy hook per cert)")
    print(f"ratio   : baseline / certgit = {baseline_s / certgit_s:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
