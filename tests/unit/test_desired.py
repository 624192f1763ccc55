"""DesiredLoader: YAML files -> DesiredState, or every positioned problem at once."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import certgit.reconciler.desired as desired_module
from certgit.reconciler.desired import DesiredLoader, directory_entries, load_directory
from certgit.reconciler.errors import ConfigErrors
from certgit.reconciler.model import (
    ApprovalHook,
    ApprovalRule,
    Binding,
    FileEntry,
    KeyAlgorithm,
    KeyRotation,
    KeySpec,
    SecretRef,
    SourceRef,
    VerifySpec,
)

ISSUER = """\
apiVersion: certgit.dev/v1
kind: Issuer
metadata: {name: internal-ca}
spec:
  type: local-ca
  localCA:
    commonName: certgit demo CA
    certificateRef: {file: /etc/ca.pem}
    keyRef: {env: CA_KEY_PEM}
"""

CERT = """\
apiVersion: certgit.dev/v1
kind: Certificate
metadata:
  name: www
  labels: {team: web}
spec:
  commonName: www.example.com
  dnsNames: [www.example.com, example.com]
  ipAddresses: [192.0.2.10, "2001:db8:0::1"]
  key: {algorithm: RSA, size: 3072, rotation: Never}
  issuerRef: {name: internal-ca}
  duration: 1d12h
  renewBefore: 12h
  deployTo:
    - target: web-1
      files: {certificate: www.crt, key: www.key}
"""

TARGET = """\
apiVersion: certgit.dev/v1
kind: Target
metadata: {name: web-1, labels: {env: production}}
spec:
  type: files
  transport: {type: local}
  settings:
    directory: /srv/certs
    files: {combined: null}
    mode: "0644"
    reloadCommand: [nginx, -s, reload]
  verify: {endpoint: "127.0.0.1:8443", serverName: www.example.com}
  approval: {actions: [deploy, remove]}
"""

POLICY = """\
apiVersion: certgit.dev/v1
kind: Policy
metadata: {name: production-gate}
spec:
  approvals:
    - name: production-deploys
      match:
        targetLabels: {env: production}
        targets: [web-1]
        actions: [deploy, remove]
  pruneOrphans: true
"""


class Files:
    """FileEntry factory that counts read() calls per path."""

    def __init__(self) -> None:
        self.reads: dict[str, int] = {}

    def entry(self, path: str, text: str | bytes) -> FileEntry:
        data = text.encode() if isinstance(text, str) else text

        def read() -> bytes:
            self.reads[path] = self.reads.get(path, 0) + 1
            return data

        return FileEntry(path, hashlib.sha256(data).hexdigest(), read)

    def entries(self, files: dict[str, str]) -> list[FileEntry]:
        return [self.entry(path, text) for path, text in files.items()]


def problems_of(files: dict[str, str]) -> list[tuple[str, int, int, str]]:
    with pytest.raises(ConfigErrors) as info:
        DesiredLoader().load(Files().entries(files), "c0ffee")
    return [(p.path, p.line, p.column, p.message) for p in info.value.problems]


def valid_repo() -> dict[str, str]:
    return {
        "issuers/ca.yaml": ISSUER,
        "certs/www.yaml": CERT,
        "targets.yaml": TARGET + "---\n" + POLICY + "---\n",
    }


# --------------------------------------------------------------------------- valid input


def test_valid_documents_build_the_model() -> None:
    state = DesiredLoader().load(Files().entries(valid_repo()), "c0ffee")
    assert state.commit == "c0ffee"

    issuer = state.issuers["internal-ca"]
    assert issuer.type == "local-ca"
    assert issuer.ca_certificate == SecretRef(file="/etc/ca.pem")
    assert issuer.ca_key == SecretRef(env="CA_KEY_PEM")
    assert issuer.ca_common_name == "certgit demo CA"
    assert issuer.source == SourceRef("issuers/ca.yaml", 0)

    cert = state.certificates["www"]
    assert cert.issuer_ref == "internal-ca"
    assert cert.common_name == "www.example.com"
    assert cert.dns_names == ("www.example.com", "example.com")
    assert cert.ip_addresses == ("192.0.2.10", "2001:db8::1")  # normalised
    assert cert.key == KeySpec(KeyAlgorithm.RSA, 3072, KeyRotation.NEVER)
    assert cert.duration == timedelta(days=1, hours=12)
    assert cert.renew_before == timedelta(hours=12)
    assert cert.renew_before_percentage is None
    assert cert.deploy_to == (
        Binding("web-1", {"files": {"certificate": "www.crt", "key": "www.key"}}),
    )
    assert cert.labels == {"team": "web"}
    assert type(cert.labels) is dict

    target = state.targets["web-1"]
    assert target.type == "files"
    assert target.transport == {"type": "local"}
    assert target.settings["directory"] == "/srv/certs"
    assert target.settings["files"] == {"combined": None}
    assert target.verify == VerifySpec("127.0.0.1:8443", "www.example.com")
    assert target.approval == ApprovalHook(required=True, actions=("deploy", "remove"))
    assert target.source == SourceRef("targets.yaml", 0)

    policy = state.policies["production-gate"]
    assert policy.prune_orphans is True
    assert policy.approvals == (
        ApprovalRule(
            name="production-deploys",
            target_labels={"env": "production"},
            targets=("web-1",),
            actions=("deploy", "remove"),
        ),
    )
    assert policy.source == SourceRef("targets.yaml", 1)


def test_defaults() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = (
        "apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: {name: www}\n"
        "spec: {dnsNames: [a.example.com], issuerRef: {name: internal-ca}}\n"
        "---\n"
        "apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: {name: rsa}\n"
        "spec: {commonName: r, issuerRef: {name: internal-ca}, key: {algorithm: RSA}}\n"
        "---\n"
        "apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: {name: ed}\n"
        "spec: {commonName: e, issuerRef: {name: internal-ca}, key: {algorithm: Ed25519}}\n"
    )
    files["targets.yaml"] = (
        "apiVersion: certgit.dev/v1\nkind: Target\nmetadata: {name: web-1}\n"
        "spec: {type: files, settings: {directory: certs}}\n"
    )
    state = DesiredLoader().load(Files().entries(files), None)
    www = state.certificates["www"]
    assert www.key == KeySpec(KeyAlgorithm.ECDSA, 256, KeyRotation.ALWAYS)
    assert www.duration == timedelta(days=90)
    assert www.renew_before is None and www.deploy_to == ()
    assert state.certificates["rsa"].key.size == 2048
    assert state.certificates["ed"].key.size is None
    assert list(state.certificates) == ["ed", "rsa", "www"]  # sorted by name
    assert state.certificates["rsa"].source == SourceRef("certs/www.yaml", 1)
    target = state.targets["web-1"]
    assert target.transport == {"type": "local"}
    assert target.verify is None and target.approval is None
    assert state.policies == {}


# --------------------------------------------------------------------------- positioned errors


def test_misspelled_field_is_positioned_at_the_key() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT.replace("  dnsNames:", "  dnsName:")
    assert problems_of(files) == [
        (
            "certs/www.yaml",
            8,
            3,
            'Certificate "www": unknown field "dnsName" in spec (did you mean "dnsNames"?)',
        )
    ]


def test_bad_value_is_positioned_at_the_value() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT.replace("size: 3072", "size: 512").replace(
        "duration: 1d12h", "duration: 90 days"
    )
    assert problems_of(files) == [
        (
            "certs/www.yaml",
            10,
            31,
            'Certificate "www": spec.key.size: expected one of 2048, 3072, 4096 for RSA, got 512',
        ),
        (
            "certs/www.yaml",
            12,
            13,
            'Certificate "www": spec.duration: "90 days" is not a duration '
            "(use e.g. 90d, 720h, 30m)",
        ),
    ]


def test_missing_required_field_points_at_the_parent_key() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT.replace("  issuerRef: {name: internal-ca}\n", "")
    [(path, line, column, message)] = problems_of(files)
    assert (path, line, column) == ("certs/www.yaml", 6, 1)
    assert message == 'Certificate "www": missing required field "issuerRef" in spec'


def test_unknown_target_type_is_positioned_at_spec_type() -> None:
    files = valid_repo()
    files["targets.yaml"] = TARGET.replace("type: files", "type: iis")
    [(path, line, column, message)] = problems_of(files)
    assert (path, line, column) == ("targets.yaml", 5, 9)
    assert message.startswith('Target "web-1": spec.type: no connector "iis" is installed')
    assert "nginx" in message  # lists what is installed


def test_a_third_party_connector_type_is_accepted_when_installed() -> None:
    """Types come from the connector registry, not a fixed list in the schema."""
    files = valid_repo()
    files["targets.yaml"] = TARGET.replace("type: files", "type: iis")
    desired = DesiredLoader(connector_types={"files", "iis"}).load(Files().entries(files), None)
    assert desired.targets["web-1"].type == "iis"


def test_four_problems_in_four_files_are_reported_at_once() -> None:
    files = valid_repo()
    files["broken.yaml"] = "apiVersion: certgit.dev/v1\nkind: Issuer\n metadata: {name: x}\n"
    files["targets.yaml"] = TARGET.replace("reloadCommand", "reloadCommnd")
    files["certs/api.yaml"] = CERT.replace("name: www", "name: api").replace(
        "{name: internal-ca}", "{name: internal-cb}"
    )
    files["certs/www2.yaml"] = CERT
    problems = problems_of(files)
    assert [(p, line, col) for p, line, col, _ in problems] == [
        ("broken.yaml", 3, 10),
        ("certs/api.yaml", 11, 21),
        ("certs/www2.yaml", 4, 9),
        ("targets.yaml", 11, 5),
    ]
    messages = [m for _, _, _, m in problems]
    assert messages[0].startswith("YAML syntax error: mapping values are not allowed")
    assert messages[1] == (
        'Certificate "api": spec.issuerRef.name: no Issuer named "internal-cb" '
        '(did you mean "internal-ca"?)'
    )
    assert messages[2] == (
        'duplicate Certificate "www" (first defined at certs/www.yaml:4:9): rename one of them'
    )
    assert (
        'unknown field "reloadCommnd" in spec.settings (did you mean "reloadCommand"?)'
        in (messages[3])
    )


def test_every_duplicate_after_the_first_is_reported() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT + "---\n" + CERT
    files["certs/z.yaml"] = CERT
    problems = problems_of(files)
    assert [(p, line, col) for p, line, col, _ in problems] == [
        ("certs/www.yaml", 21, 9),
        ("certs/z.yaml", 4, 9),
    ]
    assert all("(first defined at certs/www.yaml:4:9)" in m for *_, m in problems)


def test_dangling_targets_in_deploy_to_and_policy() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT.replace("- target: web-1", "- target: web-2")
    files["targets.yaml"] = TARGET + "---\n" + POLICY.replace("[web-1]", "[web-1, mail]")
    problems = problems_of(files)
    assert problems == [
        (
            "certs/www.yaml",
            15,
            15,
            'Certificate "www": spec.deployTo[0].target: no Target named "web-2" '
            '(did you mean "web-1"?)',
        ),
        (
            "targets.yaml",
            23,
            26,
            'Policy "production-gate": spec.approvals[0].match.targets[1]: no Target named '
            "\"mail\": define a Target named 'mail'",
        ),
    ]


def test_duplicate_target_in_one_deploy_to() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT + "    - target: web-1\n"
    [(path, line, column, message)] = problems_of(files)
    assert (path, line, column) == ("certs/www.yaml", 17, 15)
    assert 'target "web-1" is listed twice' in message


def test_invalid_document_does_not_cascade_into_dangling_references() -> None:
    files = valid_repo()
    files["targets.yaml"] = TARGET.replace("mode:", "mod:")
    problems = problems_of(files)
    assert len(problems) == 1  # the typo only: web-1 still counts as defined
    assert problems[0][:3] == ("targets.yaml", 10, 5)


@pytest.mark.parametrize(
    ("old", "new", "position", "text"),
    [
        ("192.0.2.10", "192.0.2.300", (9, 17), '"192.0.2.300" is not an IPv4 or IPv6 address'),
        ("renewBefore: 12h", "renewBefore: 2d", (13, 16), "spec.renewBefore (2d) must be shorter"),
        ("renewBefore: 12h", "renewBefore: 0h", (13, 16), "spec.renewBefore: '0h' is zero"),
        (
            "renewBefore: 12h",
            "renewBefore: 12h\n  renewBeforePercentage: 10",
            (14, 3),
            "either renewBefore or renewBeforePercentage, not both",
        ),
        (
            "  commonName: www.example.com\n  dnsNames: [www.example.com, example.com]\n"
            '  ipAddresses: [192.0.2.10, "2001:db8:0::1"]\n',
            "  dnsNames: []\n",
            (6, 1),
            "give at least one of commonName, dnsNames or ipAddresses",
        ),
    ],
)
def test_certificate_semantic_checks(
    old: str, new: str, position: tuple[int, int], text: str
) -> None:
    files = valid_repo()
    assert old in CERT
    files["certs/www.yaml"] = CERT.replace(old, new)
    [(path, line, column, message)] = problems_of(files)
    assert (path, (line, column)) == ("certs/www.yaml", position)
    assert text in message


def test_issuer_needs_both_refs_or_neither() -> None:
    files = valid_repo()
    files["issuers/ca.yaml"] = ISSUER.replace("    keyRef: {env: CA_KEY_PEM}\n", "")
    [(path, line, column, message)] = problems_of(files)
    assert (path, line, column) == ("issuers/ca.yaml", 6, 3)
    assert "give both certificateRef and keyRef, or neither" in message


def test_file_level_problems_from_yamlsafe_keep_the_given_path() -> None:
    files = valid_repo()
    files["weird/bad.yml"] = "a: !!python/object:os.system x\n"
    files["weird/list.yaml"] = "- 1\n"
    problems = problems_of(files)
    assert [(p, line, col) for p, line, col, _ in problems] == [
        ("weird/bad.yml", 1, 4),
        ("weird/list.yaml", 1, 1),
    ]


# --------------------------------------------------------------------------- cache


def count_validations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real: Callable[[Any], Any] = desired_module.validate_document

    def counting(doc: Any) -> Any:
        calls[0] += 1
        return real(doc)

    monkeypatch.setattr(desired_module, "validate_document", counting)
    return calls


def test_cache_hit_neither_reads_nor_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_validations(monkeypatch)
    files = Files()
    loader = DesiredLoader()
    first = loader.load(files.entries(valid_repo()), "c1")
    assert calls[0] == 4
    assert files.reads == {"issuers/ca.yaml": 1, "certs/www.yaml": 1, "targets.yaml": 1}

    second = loader.load(files.entries(valid_repo()), "c2")
    assert calls[0] == 4
    assert files.reads == {"issuers/ca.yaml": 1, "certs/www.yaml": 1, "targets.yaml": 1}
    assert second.commit == "c2"
    assert second.certificates == first.certificates


def test_shared_cache_and_moved_file_keep_the_new_path() -> None:
    cache: dict[str, Any] = {}
    files = Files()
    DesiredLoader(cache).load(files.entries(valid_repo()), "c1")
    moved = valid_repo()
    moved["renamed/www.yaml"] = moved.pop("certs/www.yaml")
    state = DesiredLoader(cache).load(files.entries(moved), "c2")
    assert "renamed/www.yaml" not in files.reads
    assert state.certificates["www"].source == SourceRef("renamed/www.yaml", 0)


def test_cached_problems_are_reported_again_without_reading() -> None:
    files = Files()
    repo = valid_repo()
    repo["certs/www.yaml"] = CERT.replace("dnsNames", "dnsName")
    loader = DesiredLoader()
    with pytest.raises(ConfigErrors) as first:
        loader.load(files.entries(repo), "c1")
    with pytest.raises(ConfigErrors) as second:
        loader.load(files.entries(repo), "c2")
    assert second.value.problems == first.value.problems
    assert files.reads["certs/www.yaml"] == 1


def test_only_cross_document_checks_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_validations(monkeypatch)
    files = Files()
    loader = DesiredLoader()
    loader.load(files.entries(valid_repo()), "c1")
    repo = valid_repo()
    repo["issuers/ca.yaml"] = ISSUER.replace("internal-ca", "other-ca")
    with pytest.raises(ConfigErrors) as info:
        loader.load(files.entries(repo), "c2")
    assert calls[0] == 5  # only the changed issuer file was validated again
    [problem] = info.value.problems
    assert (problem.path, problem.line, problem.column) == ("certs/www.yaml", 11, 21)


# --------------------------------------------------------------------------- directories


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_directory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write(repo, "issuers/ca.yaml", ISSUER)
    write(repo, "certs/deep/www.yml", CERT)
    write(repo, "targets.yaml", TARGET)
    write(repo, ".hidden/ignored.yaml", "not: [valid")
    write(repo, "certs/.ignored.yaml", "not: [valid")
    write(repo, "README.md", "# not yaml")
    outside = write(tmp_path, "outside.yaml", "not: [valid")
    os.symlink(outside, repo / "escape.yaml")
    os.symlink(tmp_path, repo / "escape-dir")

    entries = directory_entries(repo)
    assert [e.path for e in entries] == ["certs/deep/www.yml", "issuers/ca.yaml", "targets.yaml"]
    data = (repo / "targets.yaml").read_bytes()
    assert entries[2].key == hashlib.sha256(data).hexdigest()
    assert entries[2].read() == data

    state = load_directory(repo)
    assert state.commit is None
    assert state.certificates["www"].source == SourceRef("certs/deep/www.yml", 0)
    assert set(state.targets) == {"web-1"}


def test_load_directory_reports_errors_with_relative_paths(tmp_path: Path) -> None:
    write(tmp_path, "a/b.yaml", CERT.replace("issuerRef", "issuerRf"))
    with pytest.raises(ConfigErrors) as info:
        load_directory(tmp_path)
    assert [str(p).split(": ", 1)[0] for p in info.value.problems] == [
        "a/b.yaml:6:1",  # issuerRef missing from spec
        "a/b.yaml:11:3",  # issuerRf unknown
    ]


# --------------------------------------------------------------------------- robustness

_junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 5000),
        st.sampled_from(["", "90d", "0s", "web-1", "internal-ca", "RSA", "Ed25519", "::1", "x"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "target", "size", "env", "file"]), inner, max_size=3
        ),
    ),
    max_leaves=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_documents_give_problems_never_crashes(data: st.DataObject) -> None:
    docs = [yaml.safe_load(text) for text in (ISSUER, CERT, TARGET, POLICY)]
    doc = data.draw(st.sampled_from(docs))
    paths = _paths(doc)
    path = data.draw(st.sampled_from(paths[1:]))
    node = doc
    for element in path[:-1]:
        node = node[element]
    node[path[-1]] = data.draw(_junk)
    text = yaml.safe_dump_all(docs, sort_keys=False)
    try:
        DesiredLoader().load(Files().entries({"repo.yaml": text}), None)
    except ConfigErrors as exc:
        assert all(p.path == "repo.yaml" and p.line >= 1 and p.column >= 1 for p in exc.problems)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@pytest.mark.parametrize(
    ("old", "new", "position", "text"),
    [
        # the schema refuses one unit above 100 years...
        (
            "duration: 1d12h",
            "duration: 999999999d",
            (12, 13),
            'spec.duration: "999999999d" is not a duration of at most 100 years (36500d)',
        ),
        (
            "renewBefore: 12h",
            "renewBefore: 876001h",
            (13, 16),
            'spec.renewBefore: "876001h" is not a duration of at most 100 years (36500d)',
        ),
        # ...and the parser a sum of units above it
        (
            "duration: 1d12h",
            "duration: 36500d1h",
            (12, 13),
            "spec.duration: '36500d1h' is too long: a duration is at most 100 years (36500d)",
        ),
    ],
)
def test_too_long_durations_are_positioned_problems(
    old: str, new: str, position: tuple[int, int], text: str
) -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT.replace(old, new)
    [(path, line, column, message)] = problems_of(files)
    assert (path, (line, column)) == ("certs/www.yaml", position)
    assert text in message


def test_a_hundred_years_is_the_longest_duration() -> None:
    files = valid_repo()
    files["certs/www.yaml"] = CERT.replace("duration: 1d12h", "duration: 36500d")
    desired = DesiredLoader().load(Files().entries(files), "c0ffee")
    assert desired.certificates["www"].duration == timedelta(days=36500)
