"""The atomic apply against real files and real validate/reload subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from certgit.connectors.errors import (
    DeniedError,
    ReloadFailed,
    RollbackFailed,
    ValidateFailed,
    VerifyMismatch,
)
from certgit.connectors.sdk.atomic import (
    JOURNAL,
    ApplyResult,
    FileSpec,
    apply_files,
    open_backup,
    seal_backup,
)
from certgit.connectors.sdk.transport import LocalTransport


@dataclass(frozen=True)
class Env:
    """A target directory, certgit's work dir and validate/reload scripts that log."""

    root: Path
    etc: Path
    work: Path
    log: Path
    validate: tuple[str, ...]
    reload: tuple[str, ...]

    def lines(self, kind: str) -> list[str]:
        """The log lines written by the validate or reload script."""
        if not self.log.exists():
            return []
        return [ln for ln in self.log.read_text().splitlines() if ln.startswith(kind)]

    def specs(self, tag: str, **kwargs: object) -> list[FileSpec]:
        """Three files (cert 0644, chain 0640, key 0600) whose content carries `tag`."""
        return [
            FileSpec(str(self.etc / "a.crt"), f"cert {tag}\n".encode(), mode=0o644, **kwargs),
            FileSpec(str(self.etc / "a.chain"), f"chain {tag}\n".encode(), mode=0o640, **kwargs),
            FileSpec(str(self.etc / "a.key"), f"key {tag}\n".encode(), mode=0o600, **kwargs),
        ]

    def contents(self) -> dict[str, str]:
        """name -> content of every regular file now in etc/ (temps included)."""
        return {p.name: p.read_text() for p in sorted(self.etc.iterdir()) if p.is_file()}


def write_script(path: Path, body: str) -> str:
    """An executable /bin/sh script; returns its path."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def make_env(tmp_path: Path) -> Env:
    """Validate logs what a.crt holds and fails on a BAD marker; reload logs every file."""
    etc, work, bin_dir = tmp_path / "etc", tmp_path / "work", tmp_path / "bin"
    for d in (etc, work, bin_dir):
        d.mkdir()
    log = tmp_path / "calls.log"
    validate = write_script(
        bin_dir / "validate.sh",
        f'echo "validate $(cat {etc}/a.crt 2>/dev/null)" >> {log}\n'
        f"if grep -q BAD {etc}/a.crt 2>/dev/null; then echo 'bad cert in a.crt' >&2; exit 1; fi\n"
        f"[ -e {tmp_path}/validate-hook ] && . {tmp_path}/validate-hook\n"
        "exit 0\n",
    )
    reload = write_script(
        bin_dir / "reload.sh",
        f'echo "reload $(cat {etc}/a.crt {etc}/a.chain {etc}/a.key 2>/dev/null | tr "\\n" " ")" '
        f">> {log}\n"
        f'if [ -e {tmp_path}/fail-reload ] && grep -qF "$(cat {tmp_path}/fail-reload)" '
        f"{etc}/a.crt 2>/dev/null; then echo 'reload refused' >&2; exit 3; fi\n"
        "exit 0\n",
    )
    return Env(tmp_path, etc, work, log, (validate,), (reload,))


def apply(env: Env, specs: list[FileSpec], **kwargs: object) -> ApplyResult:
    """apply_files with the env's scripts."""
    options: dict[str, object] = {"validate": env.validate, "reload": env.reload}
    options.update(kwargs)
    return apply_files(LocalTransport(), specs, work_dir=env.work, **options)  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def assert_version(env: Env, tag: str) -> None:
    """Every file is entirely version `tag`, and no temp file is left."""
    assert env.contents() == {
        "a.chain": f"chain {tag}\n",
        "a.crt": f"cert {tag}\n",
        "a.key": f"key {tag}\n",
    }


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_happy_path_writes_files_with_modes_and_runs_validate_then_reload(env: Env) -> None:
    result = apply(env, env.specs("v1"))
    assert_version(env, "v1")
    assert mode_of(env.etc / "a.crt") == 0o644
    assert mode_of(env.etc / "a.chain") == 0o640
    assert mode_of(env.etc / "a.key") == 0o600
    assert result.changed and result.validated and result.reloaded and not result.verified
    assert result.files[str(env.etc / "a.key")] == hashlib.sha256(b"key v1\n").hexdigest()
    assert env.lines("validate") == ["validate cert v1"]
    assert env.lines("reload") == ["reload cert v1 chain v1 key v1 "]
    assert not (env.work / JOURNAL).exists()


def test_second_apply_of_same_content_runs_nothing(env: Env) -> None:
    apply(env, env.specs("v1"))
    result = apply(env, env.specs("v1"))
    assert not result.changed and not result.validated and not result.reloaded
    assert result.backup_id is None
    assert len(env.lines("reload")) == 1
    assert len(env.lines("validate")) == 1


def test_mode_change_alone_is_a_change(env: Env) -> None:
    apply(env, env.specs("v1"))
    specs = env.specs("v1")
    specs[2] = FileSpec(specs[2].path, specs[2].content, mode=0o640)
    result = apply(env, specs)
    assert result.changed
    assert mode_of(env.etc / "a.key") == 0o640


def test_validate_sees_the_new_files(env: Env) -> None:
    apply(env, env.specs("v1"))
    apply(env, env.specs("v2"))
    # The validate script read a.crt: it saw v2, so it ran after the swap.
    assert env.lines("validate") == ["validate cert v1", "validate cert v2"]
    assert env.lines("reload")[-1] == "reload cert v2 chain v2 key v2 "


def test_validate_failure_restores_old_files_and_never_reloads(env: Env) -> None:
    apply(env, env.specs("v1"))
    with pytest.raises(ValidateFailed) as caught:
        apply(env, env.specs("BAD"))
    assert "bad cert in a.crt" in str(caught.value)
    assert_version(env, "v1")
    assert env.lines("validate")[-1] == "validate cert BAD"  # it saw the new file
    assert len(env.lines("reload")) == 1  # only the first apply's
    assert not (env.work / JOURNAL).exists()


def test_reload_failure_restores_and_reloads_old_files(env: Env) -> None:
    apply(env, env.specs("v1"))
    (env.root / "fail-reload").write_text("v2")  # the reload refuses a.crt holding v2
    with pytest.raises(ReloadFailed) as caught:
        apply(env, env.specs("v2"))
    assert "reload refused" in str(caught.value)
    assert_version(env, "v1")
    assert env.lines("reload")[1:] == [
        "reload cert v2 chain v2 key v2 ",
        "reload cert v1 chain v1 key v1 ",  # the second reload ran on the old files
    ]


def test_reload_failure_on_first_deploy_removes_new_files(env: Env) -> None:
    (env.root / "fail-reload").write_text("v1")
    with pytest.raises(ReloadFailed):
        apply(env, env.specs("v1"))
    assert env.contents() == {}
    assert env.lines("reload") == ["reload cert v1 chain v1 key v1 ", "reload "]


def test_second_reload_failing_is_rollback_failed(env: Env) -> None:
    apply(env, env.specs("v1"))
    (env.root / "fail-reload").write_text("cert")  # every reload now fails
    with pytest.raises(RollbackFailed) as caught:
        apply(env, env.specs("v2"))
    assert "the old files are back but reloading them failed" in str(caught.value)
    assert "yourself" in str(caught.value)
    assert_version(env, "v1")


def test_verify_mismatch_rolls_back_and_reloads(env: Env) -> None:
    apply(env, env.specs("v1"))

    def verify() -> None:
        raise VerifyMismatch("endpoint serves something else")

    with pytest.raises(VerifyMismatch):
        apply(env, env.specs("v2"), verify=verify)
    assert_version(env, "v1")
    assert env.lines("reload")[-1] == "reload cert v1 chain v1 key v1 "
    assert len(env.lines("reload")) == 3


def test_verify_success_is_reported(env: Env) -> None:
    seen: list[str] = []
    result = apply(env, env.specs("v1"), verify=lambda: seen.append(env.contents()["a.crt"]))
    assert result.verified
    assert seen == ["cert v1\n"]


def test_rollback_failed_when_backups_vanish(env: Env) -> None:
    apply(env, env.specs("v1"))
    # A validate that deletes certgit's backups and then fails: restore is impossible.
    (env.root / "validate-hook").write_text(f"rm -rf {env.work}/backups\nexit 1\n")
    with pytest.raises(RollbackFailed) as caught:
        apply(env, env.specs("v2"))
    message = str(caught.value)
    assert "restore them by hand" in message and "reload the server yourself" in message
    assert caught.value.rolled_back is False
    assert not (env.work / JOURNAL).exists()
    assert list(env.work.glob("journal.failed-*.json"))  # kept for the operator
    assert len(env.lines("reload")) == 1
    # The next apply converges to a complete new set.
    (env.root / "validate-hook").unlink()
    apply(env, env.specs("v3"))
    assert_version(env, "v3")


def test_owner_precedence_explicit_then_existing_then_default(env: Env) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root (CI runs as root)")
    apply(env, env.specs("v1", owner="1234", group="2345"))
    st = (env.etc / "a.key").stat()
    assert (st.st_uid, st.st_gid) == (1234, 2345)
    # No owner given: the existing file's owner and mode stay.
    specs = [FileSpec(str(env.etc / "a.key"), b"key v2\n")]
    apply(env, specs)
    st = (env.etc / "a.key").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o600)
    # A new file without owner/mode: process ids and the connector default.
    apply(env, [FileSpec(str(env.etc / "new.pem"), b"x", default_mode=0o640)])
    st = (env.etc / "new.pem").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o640)
    # Explicit beats existing.
    apply(env, [FileSpec(str(env.etc / "a.key"), b"key v3\n", owner="root", mode=0o640)])
    st = (env.etc / "a.key").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 2345, 0o640)


def test_existing_mode_is_kept_when_none_given(env: Env) -> None:
    (env.etc / "a.crt").write_text("old\n")
    (env.etc / "a.crt").chmod(0o604)
    apply(env, [FileSpec(str(env.etc / "a.crt"), b"new\n", default_mode=0o644)])
    assert mode_of(env.etc / "a.crt") == 0o604


def test_symlink_at_destination_is_refused_and_its_target_untouched(env: Env) -> None:
    outside = env.root / "outside.txt"
    outside.write_text("precious\n")
    (env.etc / "a.crt").symlink_to(outside)
    with pytest.raises(DeniedError) as caught:
        apply(env, env.specs("v1"))
    assert "symlink" in str(caught.value)
    assert outside.read_text() == "precious\n"
    assert (env.etc / "a.crt").is_symlink()
    assert not (env.etc / "a.chain").exists()  # nothing written
    assert env.lines("validate") == [] and env.lines("reload") == []
    assert [p.name for p in env.etc.iterdir()] == ["a.crt"]  # no temp left


def test_symlinked_parent_swapped_in_is_refused(env: Env) -> None:
    outside = env.root / "outside"
    outside.mkdir()
    sub = env.etc / "sub"
    sub.mkdir()
    transport = LocalTransport()
    # A parent swapped for a symlink between check and write: write_temp refuses it.
    sub.rmdir()
    sub.symlink_to(outside)
    with pytest.raises(DeniedError):
        transport.write_temp(str(sub), ".x.", b"data", 0o644, -1, -1)
    assert list(outside.iterdir()) == []


def test_backup_retention_keeps_newest(env: Env) -> None:
    ids = [
        apply(env, env.specs(f"v{i}"), retention=2, backup_key=KEY).backup_id for i in range(5)
    ]
    kept = sorted(p.name for p in (env.work / "backups").iterdir())
    assert kept == sorted(ids[-2:])
    # The newest backup holds the previous version (v3) of every file, sealed.
    newest = env.work / "backups" / str(ids[-1])
    manifest = json.loads((newest / "manifest.json").read_text())
    assert manifest["encrypted"] is True and "AES-256-GCM" in manifest["format"]
    assert set(manifest["files"]) == {str(env.etc / n) for n in ("a.crt", "a.chain", "a.key")}
    opened = {
        open_backup(KEY, Path(info["backup"]).read_bytes(), dest, str(ids[-1]))
        for dest, info in manifest["files"].items()
    }
    assert opened == {b"cert v3\n", b"chain v3\n", b"key v3\n"}
    for copy in newest.glob("*.bak"):
        assert copy.read_bytes().startswith(b"CGB1") and b"v3" not in copy.read_bytes()
        assert mode_of(copy) == 0o600


def test_no_temp_files_left_after_any_outcome(env: Env) -> None:
    apply(env, env.specs("v1"))
    with pytest.raises(ValidateFailed):
        apply(env, env.specs("BAD"))
    (env.root / "fail-reload").write_text("v2")
    with pytest.raises(ReloadFailed):
        apply(env, env.specs("v2"))
    assert sorted(p.name for p in env.etc.iterdir()) == ["a.chain", "a.crt", "a.key"]


def test_removal_deletes_with_backup_and_rolls_back(env: Env) -> None:
    apply(env, env.specs("v1"))
    (env.root / "validate-hook").write_text("exit 1\n")
    with pytest.raises(ValidateFailed):
        apply(env, [], remove=[str(env.etc / "a.key")])
    assert_version(env, "v1")  # the deleted key came back
    (env.root / "validate-hook").unlink()
    result = apply(env, [], remove=[str(env.etc / "a.key"), str(env.etc / "never.pem")])
    assert result.changed and not (env.etc / "a.key").exists()
    assert str(env.etc / "a.key") not in result.files


def test_new_directory_is_created(env: Env) -> None:
    dest = env.etc / "deep" / "er" / "x.pem"
    apply(env, [FileSpec(str(dest), b"x")], validate=None, reload=None)
    assert dest.read_bytes() == b"x"


def test_filespec_repr_hides_content() -> None:
    spec = FileSpec("/x/key.pem", b"-----BEGIN PRIVATE KEY----- secret", role="key")
    assert "secret" not in repr(spec)


# --- sealed backups -----------------------------------------------------------------

KEY = bytes(range(32))


def pem_key(tag: str) -> bytes:
    """A private-key-shaped PEM that carries `tag` (validate/reload only `cat` it)."""
    return (
        b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0w"
        + tag.encode()
        + b"\n-----END PRIVATE KEY-----\n"
    )


def key_specs(env: Env, tag: str) -> list[FileSpec]:
    return [
        FileSpec(str(env.etc / "a.crt"), f"cert {tag}\n".encode(), mode=0o644),
        FileSpec(str(env.etc / "a.key"), pem_key(tag), mode=0o600),
    ]


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_validate_failure_restores_old_key_byte_for_byte_from_sealed_backup(env: Env) -> None:
    apply(env, key_specs(env, "v1"), backup_key=KEY)
    old_key = (env.etc / "a.key").read_bytes()
    with pytest.raises(ValidateFailed):
        apply(env, key_specs(env, "BAD"), backup_key=KEY)
    assert (env.etc / "a.key").read_bytes() == old_key
    assert mode_of(env.etc / "a.key") == 0o600
    # The copy it came from was sealed on disk, and is kept (retention).
    backup_set = max((env.work / "backups").iterdir())  # the BAD apply's set
    manifest = json.loads((backup_set / "manifest.json").read_text())
    copy = Path(manifest["files"][str(env.etc / "a.key")]["backup"])
    assert copy.read_bytes().startswith(b"CGB1")
    assert open_backup(KEY, copy.read_bytes(), str(env.etc / "a.key"), backup_set.name) == old_key
    assert files_holding(env.work, b"PRIVATE KEY") == []


@pytest.mark.parametrize("backup_key", [KEY, None], ids=["sealed", "no-key"])
def test_no_plain_private_key_under_work_dir(env: Env, backup_key: bytes | None) -> None:
    apply(env, key_specs(env, "v1"), backup_key=backup_key)
    apply(env, key_specs(env, "v2"), backup_key=backup_key)  # replaced a key: backed up
    assert files_holding(env.work, b"PRIVATE KEY") == []
    with pytest.raises(ValidateFailed):
        apply(env, key_specs(env, "BAD"), backup_key=backup_key)  # rolled back
    (env.root / "fail-reload").write_text("v3")
    with pytest.raises(ReloadFailed):
        apply(env, key_specs(env, "v3"), backup_key=backup_key)  # rolled back and reloaded
    assert (env.etc / "a.key").read_bytes() == pem_key("v2")
    assert files_holding(env.work, b"PRIVATE KEY") == []
    assert files_holding(env.work, b"MIGHAgEA") == []
    sets = list((env.work / "backups").iterdir())
    assert len(sets) == (4 if backup_key else 0)  # plain copies never outlive the apply


def test_plain_backup_sets_are_pruned_when_sealing_starts(env: Env) -> None:
    # A set written before backups were sealed (old manifest format, plain copy).
    legacy = env.work / "backups" / "20250101T000000.000000000-abcdef"
    legacy.mkdir(parents=True)
    (legacy / "0.bak").write_bytes(pem_key("ancient"))
    (legacy / "manifest.json").write_text(json.dumps({"/etc/a.key": {"backup": "0.bak"}}))
    apply(env, key_specs(env, "v1"), backup_key=KEY)
    apply(env, key_specs(env, "v2"), backup_key=KEY)
    assert not legacy.exists()
    assert len(list((env.work / "backups").iterdir())) == 2
    assert files_holding(env.work, b"PRIVATE KEY") == []


def test_sealed_backup_is_bound_to_its_path_and_id() -> None:
    blob = seal_backup(KEY, b"secret", "/etc/a.key", "id1")
    assert blob[:4] == b"CGB1" and b"secret" not in blob
    assert open_backup(KEY, blob, "/etc/a.key", "id1") == b"secret"
    for key, dest, backup_id in [
        (bytes(32), "/etc/a.key", "id1"),
        (KEY, "/etc/b.key", "id1"),
        (KEY, "/etc/a.key", "id2"),
    ]:
        with pytest.raises(ValueError, match="authentication failed"):
            open_backup(key, blob, dest, backup_id)
    with pytest.raises(ValueError, match="not a sealed"):
        open_backup(KEY, b"secret", "/etc/a.key", "id1")


def test_tampered_sealed_backup_is_rollback_failed(env: Env) -> None:
    apply(env, key_specs(env, "v1"), backup_key=KEY)
    # A validate that swaps a sealed copy for another and fails: the copy does not open.
    (env.root / "validate-hook").write_text(
        f"for f in {env.work}/backups/*/*.bak; do printf 'CGB1%040d' 0 > $f; done\nexit 1\n"
    )
    with pytest.raises(RollbackFailed) as caught:
        apply(env, key_specs(env, "v2"), backup_key=KEY)
    assert "cannot be decrypted" in str(caught.value)
    assert list(env.work.glob("journal.failed-*.json"))


def test_backup_key_must_be_32_bytes(env: Env) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        apply(env, key_specs(env, "v1"), backup_key=b"short")
    assert env.contents() == {}


def test_target_spec_carries_a_backup_key_derived_from_the_master_key(tmp_path: Path) -> None:
    from certgit.reconciler.model import Target
    from certgit.reconciler.sealing import ENV_KEY
    from certgit.reconciler.targets import BACKUP_KEY_INFO, target_spec

    master = bytes(range(100, 132))
    env = {ENV_KEY: master.hex()}
    spec = target_spec(Target(name="web", type="files"), tmp_path, env=env)
    assert spec.backup_key is not None and len(spec.backup_key) == 32
    assert spec.backup_key != master and BACKUP_KEY_INFO == b"certgit backups v1"
    assert spec.backup_key.hex() not in repr(spec) and "backup_key" not in repr(spec)
    assert target_spec(Target(name="db", type="files"), tmp_path, env=env).backup_key == (
        spec.backup_key
    )
    other = target_spec(Target(name="web", type="files"), tmp_path, env={ENV_KEY: "11" * 32})
    assert other.backup_key != spec.backup_key
    # Positional callers (executor, engine) still work: the key then comes from the state dir.
    assert target_spec(Target(name="web", type="files"), tmp_path / "state").backup_key
