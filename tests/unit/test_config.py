"""Settings precedence: flags > environment > certgit.toml > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from certgit.reconciler.config import SettingsError, resolve_settings

NO_FLAGS: dict[str, object] = {}


def write_toml(path: Path) -> Path:
    path.write_text(
        '[repository]\nurl = "repo-from-toml"\nref = "toml-ref"\npath = "desired/"\n'
        'allowHistoryRewrite = true\n[state]\ndir = "state-from-toml"\n'
    )
    return path


def test_defaults_without_anything(tmp_path: Path) -> None:
    s = resolve_settings(NO_FLAGS, env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert s.repo is None and s.ref is None and s.path == ""
    assert s.state_dir == tmp_path / ".local" / "state" / "certgit"
    assert s.allow_history_rewrite is False


def test_toml_in_cwd_relative_paths_resolve_against_its_directory(tmp_path: Path) -> None:
    write_toml(tmp_path / "certgit.toml")
    other = tmp_path / "elsewhere"
    other.mkdir()
    s = resolve_settings({"config": str(tmp_path / "certgit.toml")}, env={}, cwd=other)
    assert s.repo == str(tmp_path / "repo-from-toml")
    assert s.state_dir == tmp_path / "state-from-toml"
    assert (s.ref, s.path, s.allow_history_rewrite) == ("toml-ref", "desired", True)
    assert resolve_settings(NO_FLAGS, env={}, cwd=tmp_path).ref == "toml-ref"


def test_env_beats_toml_and_flags_beat_env(tmp_path: Path) -> None:
    write_toml(tmp_path / "certgit.toml")
    env = {"CERTGIT_REF": "env-ref", "CERTGIT_REPO": "file:///env/repo", "CERTGIT_STATE_DIR": "/s"}
    s = resolve_settings(NO_FLAGS, env=env, cwd=tmp_path)
    assert (s.ref, s.repo, s.state_dir) == ("env-ref", "file:///env/repo", Path("/s"))
    s = resolve_settings({"ref": "flag-ref", "state_dir": "/f"}, env=env, cwd=tmp_path)
    assert (s.ref, s.state_dir) == ("flag-ref", Path("/f"))
    assert s.repo == "file:///env/repo"  # URLs are not turned into paths


def test_config_from_env_var_and_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[repository\nurl=")
    with pytest.raises(SettingsError, match=r"bad\.toml"):
        resolve_settings(NO_FLAGS, env={"CERTGIT_CONFIG": str(bad)}, cwd=tmp_path)
    with pytest.raises(SettingsError, match="not found"):
        resolve_settings({"config": "missing.toml"}, env={}, cwd=tmp_path)


def test_path_may_not_escape_the_repository(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="inside the repository"):
        resolve_settings({"path": "../etc"}, env={}, cwd=tmp_path)
