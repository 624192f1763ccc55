"""Fixtures for end-to-end CLI tests: the sample repo as a real Git repository."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from certgit.reconciler.cli import main
from tests.gitutil import commit_files, init_repo

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample-repo"


@dataclass
class Result:
    code: int
    out: str
    err: str


def sample_files() -> dict[str, bytes | None]:
    return {
        p.relative_to(SAMPLE).as_posix(): p.read_bytes() for p in SAMPLE.rglob("*") if p.is_file()
    }


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `certgit ARGS` in-process with a private state dir and no ambient config."""
    for var in ("CERTGIT_REPO", "CERTGIT_REF", "CERTGIT_PATH", "CERTGIT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CERTGIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(args), out, err)
        return Result(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def sample_git(tmp_path: Path):
    """sample-repo/ committed to a real Git repository; returns (repo, path)."""
    path = tmp_path / "desired"
    repo = init_repo(path)
    commit_files(repo, sample_files(), "sample desired state")
    return repo, path


@pytest.fixture
def nginx_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory: NginxLab(names, adopt=..., approval=...) with a real nginx; stopped afterwards."""
    from tests.e2e.labs import NginxLab
    from tests.integration.servers import require_binary

    require_binary("nginx")
    for var in ("CERTGIT_REPO", "CERTGIT_REF", "CERTGIT_PATH", "CERTGIT_CONFIG",
                "CERTGIT_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    labs: list[NginxLab] = []

    def make(names: tuple[str, ...] = ("a", "b", "c"), **kwargs: object) -> NginxLab:
        lab = NginxLab(tmp_path / f"lab{len(labs)}", tuple(names), **kwargs)  # type: ignore[arg-type]
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()
