"""GitSource against real repositories made with pygit2 in tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import FileMode, ObjectType

from certgit.reconciler.errors import SourceError
from certgit.reconciler.source import (
    GitSource,
    Snapshot,
    SourceConfig,
    display_url,
    normalise_url,
)
from tests.gitutil import AUTHOR_EMAIL, AUTHOR_NAME, commit_files, init_repo, isolated_git_config

CERT = b"apiVersion: certgit.dev/v1\nkind: Certificate\nmetadata: {name: www}\n"
ISSUER = b"apiVersion: certgit.dev/v1\nkind: Issuer\nmetadata: {name: ca}\n"


@pytest.fixture(autouse=True)
def _no_user_git_config(tmp_path: Path) -> Iterator[None]:
    with isolated_git_config(tmp_path / "empty-gitconfig"):
        yield


@pytest.fixture
def upstream(tmp_path: Path) -> pygit2.Repository:
    repo = init_repo(tmp_path / "upstream")
    commit_files(repo, {"certs/www.yaml": CERT, "issuers.yml": ISSUER}, "initial")
    return repo


def make_source(tmp_path: Path, url: str | Path, **kwargs: object) -> GitSource:
    return GitSource(SourceConfig(url=str(url), **kwargs), tmp_path / "state")  # type: ignore[arg-type]


def paths(snapshot: Snapshot) -> list[str]:
    return [f.path for f in snapshot.files]


def head_of(repo: pygit2.Repository, branch: str = "main") -> str:
    return str(repo.references[f"refs/heads/{branch}"].target)


def annotated_tag(repo: pygit2.Repository, name: str, commit: str) -> None:
    signature = pygit2.Signature(AUTHOR_NAME, AUTHOR_EMAIL)
    repo.create_tag(name, commit, ObjectType.COMMIT, signature, f"release {name}")


# --------------------------------------------------------------------------- URLs and refs


@pytest.mark.parametrize("kind", ["path", "file-url"])
def test_local_path_and_file_url_both_poll(
    tmp_path: Path, upstream: pygit2.Repository, kind: str
) -> None:
    root = Path(upstream.workdir).resolve()
    url = str(root) if kind == "path" else f"file://{root}"
    snapshot = make_source(tmp_path, url).poll()
    assert snapshot.commit == head_of(upstream)
    assert snapshot.tree == str(upstream[head_of(upstream)].peel(pygit2.Commit).tree_id)
    assert paths(snapshot) == ["certs/www.yaml", "issuers.yml"]


def test_ref_by_branch_annotated_tag_full_ref_and_sha(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    first = head_of(upstream)
    annotated_tag(upstream, "v1", first)
    second = commit_files(upstream, {"certs/api.yaml": CERT}, "add api")
    feature = commit_files(upstream, {"certs/feature.yaml": CERT}, "feature", branch="feature")
    url = upstream.workdir

    def commit_for(ref: str) -> str:
        return make_source(tmp_path, url, ref=ref).poll().commit

    assert commit_for("main") == second
    assert commit_for("feature") == feature
    assert commit_for("v1") == first  # annotated tag peeled to its commit
    assert commit_for("refs/tags/v1") == first
    assert commit_for("refs/heads/main") == second
    assert commit_for(first) == first
    assert commit_for(first[:10]) == first


def test_unknown_ref_is_a_source_error(tmp_path: Path, upstream: pygit2.Repository) -> None:
    source = make_source(tmp_path, upstream.workdir, ref="no-such-branch")
    with pytest.raises(SourceError, match="ref 'no-such-branch' not found"):
        source.poll()


@pytest.mark.parametrize("default", ["main", "trunk"])
def test_default_ref_follows_the_remote_head(tmp_path: Path, default: str) -> None:
    repo = init_repo(tmp_path / "up", initial_branch=default)
    on_default = commit_files(repo, {"a.yaml": CERT}, "default", branch=default)
    commit_files(repo, {"b.yaml": CERT}, "other", branch="zzz-other")
    snapshot = make_source(tmp_path, repo.workdir).poll()
    assert snapshot.commit == on_default
    assert paths(snapshot) == ["a.yaml"]


def test_default_branch_change_on_the_remote_is_followed(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    source = make_source(tmp_path, upstream.workdir)
    assert source.poll().commit == head_of(upstream)
    trunk = commit_files(upstream, {"trunk.yaml": CERT}, "trunk", branch="trunk", parents=[])
    upstream.set_head("refs/heads/trunk")
    snapshot = source.poll()
    assert snapshot.commit == trunk
    assert paths(snapshot) == ["trunk.yaml"]


# --------------------------------------------------------------------------- files


def test_subdirectory_paths_are_relative_to_the_repo_root(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "up")
    commit_files(
        repo,
        {
            "desired/certs/www.yaml": CERT,
            "desired/issuer.yml": ISSUER,
            "desired-other/x.yaml": CERT,
            "top.yaml": CERT,
        },
        "layout",
    )
    snapshot = make_source(tmp_path, repo.workdir, path="desired/").poll()
    assert paths(snapshot) == ["desired/certs/www.yaml", "desired/issuer.yml"]
    tree = repo[head_of(repo)].peel(pygit2.Commit).tree["desired"]
    assert snapshot.tree == str(tree.id)


def test_non_yaml_dot_files_symlinks_and_submodules_are_skipped(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "up")
    base = commit_files(
        repo,
        {
            "a.yaml": CERT,
            "b.yml": ISSUER,
            "README.md": b"# docs\n",
            "a.yaml.bak": CERT,
            ".hidden.yaml": CERT,
            ".github/ci.yaml": CERT,
            "sub/.dot/c.yaml": CERT,
            "sub/d.yaml": CERT,
        },
        "files",
    )
    # Symlinks and gitlinks cannot come through commit_files: build that tree by hand.
    index = pygit2.Index()
    index.read_tree(repo[base].peel(pygit2.Commit).tree)
    index.add(pygit2.IndexEntry("link.yaml", repo.create_blob(b"a.yaml"), FileMode.LINK))
    index.add(pygit2.IndexEntry("vendored.yaml", pygit2.Oid(hex="1" * 40), FileMode.COMMIT))
    signature = pygit2.Signature(AUTHOR_NAME, AUTHOR_EMAIL)
    repo.create_commit(
        "refs/heads/main", signature, signature, "links", index.write_tree(repo), [repo[base].id]
    )
    snapshot = make_source(tmp_path, repo.workdir).poll()
    assert paths(snapshot) == ["a.yaml", "b.yml", "sub/d.yaml"]
    # Everything else is no desired state but is still handed over (the loader scans it
    # for committed keys); symlinks and submodules are not files at all.
    assert [f.path for f in snapshot.others] == [
        ".github/ci.yaml",
        ".hidden.yaml",
        "README.md",
        "a.yaml.bak",
        "sub/.dot/c.yaml",
    ]
    assert {f.path: f.read() for f in snapshot.others}["README.md"] == b"# docs\n"


def test_read_returns_the_blob_bytes_and_key_is_the_blob_id(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    snapshot = make_source(tmp_path, upstream.workdir).poll()
    tree = upstream[head_of(upstream)].peel(pygit2.Commit).tree
    by_path = {f.path: f for f in snapshot.files}
    assert by_path["certs/www.yaml"].read() == CERT
    assert by_path["issuers.yml"].read() == ISSUER
    assert by_path["certs/www.yaml"].key == str(tree["certs/www.yaml"].id)
    assert by_path["issuers.yml"].key == str(tree["issuers.yml"].id)


def test_path_without_yaml_is_refused_not_read_as_empty(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "up")
    commit_files(repo, {"desired/README.md": b"nothing here\n", "x.yaml": CERT}, "docs only")
    with pytest.raises(SourceError, match=r"no \.yaml or \.yml file") as info:
        make_source(tmp_path, repo.workdir, path="desired").poll()
    assert "delete everything" in str(info.value)
    assert info.value.temporary is False  # only a new commit can fix it: no retry loop


def test_missing_path_and_file_path_are_refused(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    with pytest.raises(SourceError, match="path 'nope' does not exist"):
        make_source(tmp_path, upstream.workdir, path="nope").poll()
    with pytest.raises(SourceError, match="is not a directory"):
        make_source(tmp_path, upstream.workdir, path="issuers.yml").poll()
    with pytest.raises(SourceError, match="plain subdirectory"):
        make_source(tmp_path, upstream.workdir, path="../etc")


def test_all_yaml_deleted_in_a_new_commit_is_refused(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    source = make_source(tmp_path, upstream.workdir)
    good = source.poll()
    commit_files(upstream, {"certs/www.yaml": None, "issuers.yml": None, "x.txt": b"x"}, "rm")
    with pytest.raises(SourceError, match=r"no \.yaml or \.yml file"):
        source.poll(last_applied=good.commit)


# --------------------------------------------------------------------------- polling


def test_a_new_commit_is_seen_after_poll_not_before(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    source = make_source(tmp_path, upstream.workdir)
    first = source.poll()
    second_id = commit_files(upstream, {"certs/api.yaml": CERT}, "add api")
    assert source.resolve().commit == first.commit  # resolve alone does not fetch
    second = source.poll(last_applied=first.commit)
    assert second.commit == second_id
    assert paths(second) == ["certs/api.yaml", "certs/www.yaml", "issuers.yml"]
    unchanged = {f.path: f.key for f in first.files}
    assert {f.path: f.key for f in second.files if f.path in unchanged} == unchanged


def test_unchanged_poll_returns_the_same_snapshot_object(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    source = make_source(tmp_path, upstream.workdir)
    first = source.poll()
    assert source.poll(last_applied=first.commit) is first
    # A new commit with the same tree reuses the walked files.
    empty_change = commit_files(upstream, {}, "no file change")
    again = source.poll(last_applied=first.commit)
    assert again.commit == empty_change
    assert again.tree == first.tree
    assert again.files is first.files


def test_unreachable_url_is_a_source_error_and_old_snapshot_stays_usable(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    source = make_source(tmp_path, upstream.workdir)
    good = source.poll()
    shutil.rmtree(upstream.workdir)
    with pytest.raises(SourceError) as info:
        source.poll(last_applied=good.commit)
    message = str(info.value)
    assert normalise_url(upstream.workdir) in message
    assert "last good commit stays in force" in message
    assert info.value.temporary
    assert sorted(f.read() for f in good.files) == sorted([CERT, ISSUER])
    # A path that is gone is named as such, not as libgit2's "unsupported URL protocol".
    assert f"repository path {normalise_url(upstream.workdir)} does not exist" in message
    assert "(moved or deleted?)" in message and "protocol" not in message


@pytest.mark.parametrize("kind", ["path", "file-url"])
def test_snapshot_of_reads_an_older_commit_from_the_mirror_without_fetching(
    tmp_path: Path, upstream: pygit2.Repository, kind: str
) -> None:
    url = upstream.workdir if kind == "path" else Path(upstream.workdir).as_uri()
    source = make_source(tmp_path, url)
    first = source.poll()
    newer = commit_files(upstream, {"certs/new.yaml": CERT}, "new")
    assert source.poll().commit == newer
    moved = Path(upstream.workdir).with_name("moved")
    Path(upstream.workdir).rename(moved)
    with pytest.raises(SourceError, match=r"does not exist \(moved or deleted\?\)"):
        source.poll()
    old = source.snapshot_of(first.commit)  # no fetch: the remote is gone
    assert (old.commit, old.tree) == (first.commit, first.tree)
    assert paths(old) == ["certs/www.yaml", "issuers.yml"]
    assert make_source(tmp_path, url).snapshot_of(newer).commit == newer  # a new process too
    with pytest.raises(SourceError, match="is not in the mirror"):
        source.snapshot_of("ab" * 20)


def test_branch_deleted_on_the_remote_is_pruned_and_reported(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    commit_files(upstream, {"certs/rel.yaml": CERT}, "release", branch="release")
    source = make_source(tmp_path, upstream.workdir, ref="release")
    good = source.poll()
    upstream.branches["release"].delete()
    with pytest.raises(SourceError, match=r"ref 'release' not found .* deleted"):
        source.poll(last_applied=good.commit)
    assert source.mirror_path.is_dir()
    assert pygit2.Repository(str(source.mirror_path)).references.get("refs/heads/release") is None


def test_deleted_tag_is_pruned(tmp_path: Path, upstream: pygit2.Repository) -> None:
    annotated_tag(upstream, "v1", head_of(upstream))
    source = make_source(tmp_path, upstream.workdir, ref="v1")
    source.poll()
    upstream.references.delete("refs/tags/v1")
    with pytest.raises(SourceError, match="ref 'v1' not found"):
        source.poll()


# --------------------------------------------------------------------------- history guard


def test_force_push_is_refused_unless_allowed(tmp_path: Path, upstream: pygit2.Repository) -> None:
    root = head_of(upstream)
    applied = commit_files(upstream, {"certs/api.yaml": CERT}, "applied")
    source = make_source(tmp_path, upstream.workdir)
    assert source.poll(last_applied=root).commit == applied  # a descendant: fine
    rewritten = commit_files(upstream, {"certs/other.yaml": CERT}, "rewrite", parents=[root])
    with pytest.raises(SourceError, match="allowHistoryRewrite") as info:
        source.poll(last_applied=applied)
    assert applied in str(info.value) and rewritten in str(info.value)
    assert "rewritten" in str(info.value)
    assert info.value.temporary is False

    permissive = make_source(tmp_path, upstream.workdir, allow_history_rewrite=True)
    assert permissive.poll(last_applied=applied).commit == rewritten


def test_last_applied_unknown_to_the_mirror_is_refused(
    tmp_path: Path, upstream: pygit2.Repository
) -> None:
    source = make_source(tmp_path, upstream.workdir)
    with pytest.raises(SourceError, match="allowHistoryRewrite"):
        source.poll(last_applied="ab" * 20)
    assert source.resolve(last_applied=head_of(upstream)).commit == head_of(upstream)


# --------------------------------------------------------------------------- the mirror


def test_failed_clone_leaves_no_mirror_behind(tmp_path: Path) -> None:
    source = make_source(tmp_path, tmp_path / "does-not-exist")
    with pytest.raises(SourceError, match=r"does-not-exist does not exist \(moved or deleted\?\)"):
        source.poll()
    assert not source.mirror_path.exists()
    assert list((tmp_path / "state" / "git").iterdir()) == []
    with pytest.raises(SourceError, match="fetch"):
        source.resolve()


def test_mirror_is_bare_and_shared_by_url(tmp_path: Path, upstream: pygit2.Repository) -> None:
    source = make_source(tmp_path, upstream.workdir)
    source.poll()
    mirror = pygit2.Repository(str(source.mirror_path))
    assert mirror.is_bare
    assert source.mirror_path.parent == tmp_path / "state" / "git"
    assert list(source.mirror_path.rglob("*.yaml")) == []
    # A new process (new GitSource) reuses the same mirror and fetches into it.
    newer = commit_files(upstream, {"certs/new.yaml": CERT}, "new")
    again = make_source(tmp_path, upstream.workdir + "/")
    assert again.mirror_path == source.mirror_path
    assert again.poll().commit == newer


def test_url_helpers() -> None:
    assert display_url("https://bot:s3cret@git.example/repo.git") == (
        "https://bot:***@git.example/repo.git"
    )
    assert display_url("/srv/repo") == "/srv/repo"
    assert normalise_url("file:///srv/repo/") == "file:///srv/repo"
    assert normalise_url("git@git.example:team/repo.git") == "git@git.example:team/repo.git"


def test_errors_never_show_a_url_password(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    source = make_source(tmp_path, "https://bot:s3cret@127.0.0.1:9/repo.git")
    with pytest.raises(SourceError) as info:
        source.poll()
    assert "s3cret" not in str(info.value)
    assert "https://bot:***@127.0.0.1:9/repo.git" in str(info.value)
    assert not source.mirror_path.exists()

