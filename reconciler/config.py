"""Where certgit finds its repository and state: flags > environment > certgit.toml > defaults.

setting                flag                     environment                    certgit.toml
repository URL/path    --repo                   CERTGIT_REPO                   [repository] url
branch, tag or commit  --ref                    CERTGIT_REF                    [repository] ref
subdirectory           --path                   CERTGIT_PATH                   [repository] path
accept force-pushes    --allow-history-rewrite  CERTGIT_ALLOW_HISTORY_REWRITE  allowHistoryRewrite
state directory        --state-dir              CERTGIT_STATE_DIR              [state] dir
site policy            --site-policy            CERTGIT_SITE_POLICY            [site] (inline)

certgit.toml is read from --config, else CERTGIT_CONFIG, else ./certgit.toml
if it exists. Relative paths in it are relative to the file's directory.
The site policy (sitepolicy.py) is the first of --site-policy FILE,
CERTGIT_SITE_POLICY, certgit.toml's [site] table, /etc/certgit/site.toml;
with none of them, the built-in safe defaults.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certgit.reconciler.errors import CertgitError


class SettingsError(CertgitError):
    """certgit.toml or a flag/env value is unusable."""


@dataclass(frozen=True)
class Settings:
    repo: str | None
    ref: str | None
    path: str
    state_dir: Path
    allow_history_rewrite: bool = False
    config_file: Path | None = None
    site_policy: Path | None = None  # --site-policy / CERTGIT_SITE_POLICY
    site_inline: Mapping[str, Any] | None = None  # certgit.toml's [site] table


def default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".local/state"
    )
    return Path(base) / "certgit"


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path} not found; check --config/CERTGIT_CONFIG") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}; fix the TOML syntax") from exc


def _is_url(value: str) -> bool:
    return "://" in value or value.startswith("git@")


def resolve_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge flags, environment and certgit.toml into Settings (highest precedence first)."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    config_path: Path | None = None
    if flags.get("config"):
        config_path = Path(flags["config"])
    elif env.get("CERTGIT_CONFIG"):
        config_path = Path(env["CERTGIT_CONFIG"])
    elif (cwd / "certgit.toml").is_file():
        config_path = cwd / "certgit.toml"
    if config_path is not None and not config_path.is_absolute():
        config_path = cwd / config_path
    toml: dict[str, Any] = _read_toml(config_path) if config_path else {}
    repo_section = toml.get("repository", {})
    state_section = toml.get("state", {})
    base = config_path.parent if config_path else cwd

    def pick(flag: str, env_name: str, section: Mapping[str, Any], key: str) -> Any:
        if flags.get(flag) not in (None, ""):
            return flags[flag], cwd
        if env.get(env_name) not in (None, ""):
            return env[env_name], cwd
        if section.get(key) not in (None, ""):
            return section[key], base
        return None, cwd

    repo, repo_base = pick("repo", "CERTGIT_REPO", repo_section, "url")
    if repo is not None and not _is_url(str(repo)) and not Path(repo).is_absolute():
        repo = str((repo_base / repo).resolve())
    ref, _ = pick("ref", "CERTGIT_REF", repo_section, "ref")
    path, _ = pick("path", "CERTGIT_PATH", repo_section, "path")
    rewrite, _ = pick(
        "allow_history_rewrite",
        "CERTGIT_ALLOW_HISTORY_REWRITE",
        repo_section,
        "allowHistoryRewrite",
    )
    state, state_base = pick("state_dir", "CERTGIT_STATE_DIR", state_section, "dir")
    state_dir = Path(state) if state else default_state_dir(env)
    if not state_dir.is_absolute():
        state_dir = state_base / state_dir
    site_file = flags.get("site_policy") or env.get("CERTGIT_SITE_POLICY") or None
    site_path = Path(site_file) if site_file else None
    if site_path is not None and not site_path.is_absolute():
        site_path = cwd / site_path
    site_inline = toml.get("site")
    if site_inline is not None and not isinstance(site_inline, Mapping):
        raise SettingsError(f"{config_path}: [site] must be a table (the site policy)")
    if site_inline is not None and not (flags.get("config") or env.get("CERTGIT_CONFIG")):
        # ./certgit.toml found in the working directory may be a checkout of the
        # desired-state repository: whoever pushes must not write the site policy.
        raise SettingsError(
            f"{config_path} has a [site] table but was found in the working directory, "
            "which may be a checkout of the desired-state repository; a site policy is "
            "read only from --site-policy, CERTGIT_SITE_POLICY, /etc/certgit/site.toml or "
            "a certgit.toml named by --config/CERTGIT_CONFIG. Move the policy there, or "
            "remove [site] from this file"
        )
    if site_inline is not None and config_path is not None:
        from certgit.reconciler.siteload import check_owner

        check_owner(config_path, "certgit.toml with a [site] table")
    clean_path = str(path or "").strip("/")
    if ".." in Path(clean_path).parts:
        raise SettingsError(f"repository path {path!r} must stay inside the repository")
    return Settings(
        repo=str(repo) if repo is not None else None,
        ref=str(ref) if ref else None,
        path=clean_path,
        state_dir=state_dir,
        allow_history_rewrite=_truthy(rewrite) if rewrite is not None else False,
        config_file=config_path,
        site_policy=site_path,
        site_inline=site_inline,
    )
