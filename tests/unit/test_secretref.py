"""resolve_secret: env, file and sops references within the site policy's [secrets] bounds.

Every refusal names the ref and the rule; no error ever holds the secret.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest

from certgit.reconciler.errors import IssuanceError
from certgit.reconciler.model import SecretBytes, SecretRef, SopsRef
from certgit.reconciler.secretref import refusal, resolve_secret
from certgit.reconciler.sitepolicy import SecretsPolicy

NOTHING = SecretsPolicy()  # the built-in default: secretRefs read nothing


def _files(*roots: Path) -> SecretsPolicy:
    return SecretsPolicy(files=tuple(str(r) for r in roots))


# --------------------------------------------------------------------------- env


def test_env_ref_reads_an_allowed_variable() -> None:
    policy = SecretsPolicy(env=("TOKEN",))
    assert resolve_secret(SecretRef(env="TOKEN"), policy, env={"TOKEN": "s3cret"}) == b"s3cret"


def test_env_patterns_are_fnmatch() -> None:
    policy = SecretsPolicy(env=("OPS_*",))
    assert resolve_secret(SecretRef(env="OPS_CA"), policy, env={"OPS_CA": "x"}) == b"x"


def test_env_not_in_the_policy_is_refused_without_the_value() -> None:
    with pytest.raises(IssuanceError) as info:
        resolve_secret(SecretRef(env="HOME"), NOTHING, env={"HOME": "/root/TOPSECRET"})
    message = str(info.value)
    assert message == (
        "secretRef env var HOME is not allowed by the site policy's [secrets] env; "
        "add a pattern matching it to the site policy's [secrets] env to allow it"
    )
    assert "TOPSECRET" not in message


def test_certgit_variables_are_refused_whatever_the_policy_says() -> None:
    policy = SecretsPolicy(env=("*",))
    with pytest.raises(IssuanceError, match="certgit's own variables are never readable"):
        resolve_secret(
            SecretRef(env="CERTGIT_MASTER_KEY"), policy, env={"CERTGIT_MASTER_KEY": "k" * 44}
        )


def test_missing_env_var_names_the_variable_and_the_fix() -> None:
    policy = SecretsPolicy(env=("NOPE",))
    with pytest.raises(IssuanceError) as info:
        resolve_secret(SecretRef(env="NOPE"), policy, env={})
    assert str(info.value) == "secret env var NOPE is not set; export it or use secretRef.file"


# --------------------------------------------------------------------------- file


def test_file_ref_reads_bytes_under_an_allowed_root(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(b"\x00binary\xff")
    ref = SecretRef(file=str(tmp_path / "key.pem"))
    assert resolve_secret(ref, _files(tmp_path)) == b"\x00binary\xff"


def test_file_outside_the_roots_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "key.pem").write_bytes(b"TOPSECRET")
    with pytest.raises(IssuanceError) as info:
        resolve_secret(SecretRef(file=str(tmp_path / "b" / "key.pem")), _files(tmp_path / "a"))
    message = str(info.value)
    assert "outside the site policy's [secrets] files roots" in message
    assert f"allowed: {tmp_path / 'a'}" in message
    assert "TOPSECRET" not in message


def test_root_match_is_by_component_not_by_string_prefix(tmp_path: Path) -> None:
    (tmp_path / "secrets-other").mkdir()
    (tmp_path / "secrets-other" / "k").write_bytes(b"x")
    ref = SecretRef(file=str(tmp_path / "secrets-other" / "k"))
    with pytest.raises(IssuanceError, match="outside the site policy"):
        resolve_secret(ref, _files(tmp_path / "secrets"))


def test_dotdot_cannot_leave_a_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").write_bytes(b"TOPSECRET")
    ref = SecretRef(file=f"{tmp_path}/root/../outside")
    with pytest.raises(IssuanceError, match="outside the site policy") as info:
        resolve_secret(ref, _files(tmp_path / "root"))
    assert "TOPSECRET" not in str(info.value)


def test_symlink_under_a_root_to_etc_shadow_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.key").symlink_to("/etc/shadow")
    with pytest.raises(IssuanceError) as info:
        resolve_secret(SecretRef(file=str(tmp_path / "ca.key")), _files(tmp_path))
    assert str(info.value) == (
        f"secretRef file refused: {tmp_path / 'ca.key'} (resolves to /etc/shadow) is never "
        "readable by a secretRef (/etc/shadow is off limits)"
    )


def test_symlink_under_a_root_to_another_root_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"ok")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert resolve_secret(SecretRef(file=str(tmp_path / "link")), _files(tmp_path)) == b"ok"


def test_symlink_out_of_the_roots_is_refused(tmp_path: Path) -> None:
    (tmp_path / "roots").mkdir()
    (tmp_path / "elsewhere").write_bytes(b"TOPSECRET")
    (tmp_path / "roots" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(IssuanceError, match=r"resolves to .*elsewhere\) is outside"):
        resolve_secret(SecretRef(file=str(tmp_path / "roots" / "link")), _files(tmp_path / "roots"))


@pytest.mark.parametrize(
    "path", ["/etc/shadow", "/root/.ssh/id_ed25519", "/home/ops/.ssh/id_rsa", "/etc/sudoers"]
)
def test_deny_list_wins_over_a_policy_root(path: str) -> None:
    with pytest.raises(IssuanceError, match="is never readable by a secretRef"):
        resolve_secret(SecretRef(file=path), _files(Path("/")))


def test_state_dir_and_protected_files_are_never_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "master.key").write_bytes(b"K" * 32)
    (tmp_path / "age.key").write_bytes(b"AGE")
    policy = _files(tmp_path)
    deny = (str(state), str(tmp_path / "age.key"))
    for target in (state / "master.key", tmp_path / "age.key"):
        with pytest.raises(IssuanceError, match="is never readable by a secretRef"):
            resolve_secret(SecretRef(file=str(target)), policy, deny=deny)


def test_relative_paths_are_refused(tmp_path: Path) -> None:
    assert refusal("secrets/token", _files(tmp_path)) == (
        "it is not an absolute path (a relative one would depend on where certgit runs)"
    )
    with pytest.raises(IssuanceError, match="not an absolute path"):
        resolve_secret(SecretRef(file="master.key"), _files(Path("/")))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(IssuanceError, match=r"missing\.pem does not exist"):
        resolve_secret(SecretRef(file=str(tmp_path / "missing.pem")), _files(tmp_path))


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(IssuanceError, match="is a directory"):
        resolve_secret(SecretRef(file=str(tmp_path / "d")), _files(tmp_path))


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(IssuanceError, match="is not a regular file"):
        resolve_secret(SecretRef(file=str(tmp_path / "pipe")), _files(tmp_path))


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "not readable by this user"),
        (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    ],
    ids=["permission", "io-error"],
)
def test_unreadable_file_error_has_path_but_not_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, hint: str
) -> None:
    path = tmp_path / "locked"
    path.write_bytes(b"TOPSECRET")
    real_open = os.open

    # file modes do not stop root (the CI user here), so the OS error is injected
    def fail(name: str, *args: object, **kwargs: object) -> int:
        if str(name) == str(path):
            raise error
        return real_open(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fail)
    with pytest.raises(IssuanceError) as info:
        resolve_secret(SecretRef(file=str(path)), _files(tmp_path))
    assert str(path) in str(info.value)
    assert hint in str(info.value)
    assert "TOPSECRET" not in str(info.value)


# --------------------------------------------------------------------------- sops


def test_sops_ref_gives_the_value_decrypted_at_load() -> None:
    ref = SecretRef(sops=SopsRef("s.sops.yaml", "k"), value=SecretBytes(b"v"))
    assert resolve_secret(ref, NOTHING) == b"v"  # the env/file bounds do not apply


def test_sops_ref_without_a_value_is_refused() -> None:
    with pytest.raises(IssuanceError, match=r"sops s\.sops\.yaml key k was not decrypted"):
        resolve_secret(SecretRef(sops=SopsRef("s.sops.yaml", "k")), NOTHING)


def test_a_decrypted_value_never_shows_or_pickles() -> None:
    ref = SecretRef(sops=SopsRef("s.sops.yaml", "k"), value=SecretBytes(b"TOPSECRET"))
    assert "TOPSECRET" not in repr(ref) and "TOPSECRET" not in str(ref.value)
    assert ref == SecretRef(sops=SopsRef("s.sops.yaml", "k"))  # the value is not compared
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(ref)


@pytest.mark.parametrize(
    "ref",
    [SecretRef(), SecretRef(env="A", file="/b"), SecretRef(env="A", sops=SopsRef("f", "k"))],
    ids=["neither", "env-and-file", "env-and-sops"],
)
def test_exactly_one_kind_of_ref(ref: SecretRef) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        resolve_secret(ref, SecretsPolicy(env=("A",)), env={"A": "x"})
