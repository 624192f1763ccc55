"""`certgit validate`: two bindings writing one file fail; unaccepted key types warn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

REPO = {
    "issuers/ca.yaml": (
        "apiVersion: certgit.dev/v1\n"
        "kind: Issuer\n"
        "metadata: {name: ca}\n"
        "spec: {type: local-ca}\n"
    ),
    "targets/apache.yaml": (
        "apiVersion: certgit.dev/v1\n"
        "kind: Target\n"
        "metadata: {name: apache-1}\n"
        "spec:\n"
        "  type: apache\n"
        "  transport: {type: local}\n"
        "  settings: {directory: /srv/apache-ssl}\n"
    ),
    "certificates/shop.yaml": (
        "apiVersion: certgit.dev/v1\n"
        "kind: Certificate\n"
        "metadata: {name: shop}\n"
        "spec:\n"
        "  commonName: shop.example.com\n"
        "  issuerRef: {name: ca}\n"
        "  deployTo:\n"
        "    - target: apache-1\n"
    ),
    # The incident: this binding names shop's certificate file on the same Apache.
    "certificates/blog.yaml": (
        "apiVersion: certgit.dev/v1\n"
        "kind: Certificate\n"
        "metadata: {name: blog}\n"
        "spec:\n"
        "  commonName: blog.example.com\n"
        "  issuerRef: {name: ca}\n"
        "  deployTo:\n"
        "    - target: apache-1\n"
        "      files:\n"
        "        certificate: certs/shop.crt\n"
    ),
}


def srv_site_policy(tmp_path: Path) -> str:
    """A site policy that lets these targets write where they name (/srv/...)."""
    path = tmp_path / "site.toml"
    path.write_text('[paths]\nallow = ["/srv/apache-ssl", "/srv/envoy"]\n')
    return str(path)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_validate_refuses_two_bindings_writing_one_file(tmp_path: Path) -> None:
    repo = write(tmp_path / "repo", REPO)
    r = subprocess.run(
        [str(BIN / "certgit"), "validate", str(repo), "--site-policy", srv_site_policy(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    [line] = r.stdout.splitlines()
    # positioned at blog's files.certificate, naming shop's deployTo entry
    assert line.startswith("certificates/blog.yaml:10:22: "), line
    assert "certificates/shop.yaml:8:15" in line
    assert "/srv/apache-ssl/certs/shop.crt" in line
    assert "1 problem found: nothing was changed" in r.stderr


def test_validate_warns_about_a_key_type_a_target_does_not_accept(cli, tmp_path: Path) -> None:
    files = dict(REPO)
    del files["certificates/blog.yaml"]
    files["targets/envoy.yaml"] = (
        "apiVersion: certgit.dev/v1\n"
        "kind: Target\n"
        "metadata: {name: edge}\n"
        "spec:\n"
        "  type: envoy\n"
        "  settings: {directory: /srv/envoy}\n"
    )
    files["certificates/shop.yaml"] = files["certificates/shop.yaml"].replace(
        "  issuerRef: {name: ca}\n", "  key: {algorithm: Ed25519}\n  issuerRef: {name: ca}\n"
    ) + "    - target: edge\n"
    repo = write(tmp_path / "repo", files)
    r = cli("validate", str(repo), "--site-policy", srv_site_policy(tmp_path))
    assert r.code == 0, r.out + r.err
    warning, summary = r.out.splitlines()
    assert warning.startswith("certificates/shop.yaml:10:15: warning: "), warning
    assert 'target "edge" (envoy) does not accept Ed25519 keys' in warning
    assert summary.startswith("valid: 1 issuers, 1 certificates, 2 targets")
