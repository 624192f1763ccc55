"""Dry-run config tests: run the server's config test against the NEW files, live files untouched.

`apply --dry-run` must be able to say "would fail" before anything is written.
Running `nginx -t` as configured only re-checks the files already in place, so
`dry_run_config_test` stages the new file set and a copy of the server's
config in a private directory and points the config test at the copy:

    <work_dir>/dry-run-<random>/      mode 0700, removed afterwards (keys too)
        files/<live path>             the new certificate/key files (0600);
                                      a directory the config names as a whole
                                      (`crt /etc/haproxy/certs/`, nginx
                                      `ssl_certificate /dir/$name.crt`) is
                                      copied there first, new files on top
        conf/<live path>              the main config and every file it
                                      includes, with live certificate paths and
                                      include paths rewritten to the copies

`work_dir` is certgit's private directory for the target (journal, backups,
locks), written through the transport like the atomic apply's journal; every
read of a live file (config, certificate directory) and the config test's
binary go through the sandbox's grants.

Each server family says how its test is redirected (`ServerTest`):

- nginx `nginx -t -c <staged main>` (`-p` kept): loads certificates and keys.
- Apache `apache2 -t -f <staged main>` / `apachectl -t -f ...` (ServerRoot
  kept): configtest checks that certificate files exist, NOT their content.
- HAProxy `haproxy -c -f <staged cfg>`: loads certificates and keys.
- Caddy `caddy validate --config <staged>`: provisions the TLS app, which
  loads `load_files` certificates.

When the staged test cannot be built (no recipe for the connector, a custom
validateCommand, unknown config layout, a config outside the grants), the
configured command runs against the CURRENT config if it is a known read-only
config test (`read_only_config_test`), and the line says "new files not
tested: <why>". A reload command never runs here.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from certgit.connectors.errors import CertgitError, ValidateFailed

if TYPE_CHECKING:
    from certgit.connectors.sdk.atomic import FileSpec
    from certgit.connectors.sdk.sandbox import Sandbox

__all__ = [
    "APACHE",
    "CADDY",
    "HAPROXY",
    "NGINX",
    "DryRunFailed",
    "ServerTest",
    "dry_run_config_test",
    "read_only_config_test",
]

STAGE_PREFIX = "dry-run-"
MAX_CONFIG_FILES = 2000
TEST_TIMEOUT = 60.0
_PATH_CHAR = r"[\w.\-]"
_GLOB = re.compile(r"[*?\[]")


class DryRunFailed(ValidateFailed):
    """A dry run's config test failed: the deploy would fail validate. Nothing was written.

    `detail` is the server's output (staged paths shown as the live paths they
    stand for); `lines` what the dry run had found before the test (the files
    it would create/replace), so a caller can still show them.
    """

    def __init__(
        self,
        message: str,
        *,
        target: str | None = None,
        detail: str = "",
        lines: Sequence[str] = (),
    ) -> None:
        super().__init__(message, target=target, detail=detail)
        self.lines = tuple(lines)


class _CannotStage(Exception):
    """The staged test cannot be built; the message says why (shown to the operator)."""


def _base(argv0: str) -> str:
    return posixpath.basename(argv0)


def _option(argv: Sequence[str], flag: str) -> str | None:
    """The value after `flag` (`-c X`, `--config X` or `--config=X`), or None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if flag.startswith("--") and arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _replace_option(argv: Sequence[str], flag: str, value: str) -> list[str] | None:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if flag.startswith("--") and arg.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return None


def _setting(settings: Mapping[str, Any], key: str) -> str | None:
    value = settings.get(key)
    return str(value) if value else None


@dataclass(frozen=True)
class ServerTest:
    """How one server family's config test is recognised and pointed at a staged config."""

    server: str
    binaries: frozenset[str]
    loads_certificates: bool = True
    note: str = ""
    include: re.Pattern[str] | None = None  # group "arg" = the path, "q" = its quote

    def recognise(self, argv: Sequence[str]) -> bool:
        """True if `argv` is this server's read-only config test (safe to run any time)."""
        return bool(argv) and _base(argv[0]) in self.binaries

    def main_configs(self, argv: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """Absolute paths of the config files the test reads first; _CannotStage if unknown."""
        raise NotImplementedError

    def include_base(self, main: str, text: str, argv: Sequence[str]) -> str:
        """The directory relative include paths resolve against."""
        return posixpath.dirname(main)

    def staged_argv(self, argv: Sequence[str], staged: Mapping[str, str]) -> list[str]:
        """`argv` pointed at the staged main configs (live path -> staged path)."""
        raise NotImplementedError

    def read_roots(self, argv: Sequence[str] | None, settings: Mapping[str, Any]) -> list[str]:
        """fs.read grants a staged test needs: where the config tree lives."""
        if not argv or not self.recognise(argv):
            return []
        try:
            mains = self.main_configs(argv, settings)
        except _CannotStage:
            return []
        return list(dict.fromkeys(posixpath.dirname(m) for m in mains))

    def check_text(self, path: str, text: str) -> None:
        """_CannotStage when a config uses something the staging cannot follow."""


class _Nginx(ServerTest):
    def recognise(self, argv: Sequence[str]) -> bool:
        args = list(argv[1:])
        return super().recognise(argv) and ("-t" in args or "-T" in args) and "-s" not in args

    def main_configs(self, argv: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        main = _setting(settings, "configFile") or _option(argv, "-c") or "/etc/nginx/nginx.conf"
        if not posixpath.isabs(main):
            raise _CannotStage(f"the main config {main!r} is relative; give -c an absolute path")
        return [posixpath.normpath(main)]

    def staged_argv(self, argv: Sequence[str], staged: Mapping[str, str]) -> list[str]:
        (main,) = staged.values()
        return _replace_option(argv, "-c", main) or [argv[0], "-c", main, *argv[1:]]


class _Apache(ServerTest):
    CTL = frozenset({"apachectl", "apache2ctl"})

    def recognise(self, argv: Sequence[str]) -> bool:
        if not super().recognise(argv):
            return False
        args = list(argv[1:])
        if _base(argv[0]) in self.CTL and args == ["configtest"]:
            return True
        return "-t" in args and "-k" not in args

    def main_configs(self, argv: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        main = _setting(settings, "configFile") or _option(argv, "-f")
        if main is None:
            main = "apache2.conf" if _base(argv[0]) in self.CTL or "apache2" in argv[0] else None
        if main is None:
            raise _CannotStage("the main config is unknown; set settings.configFile")
        if not posixpath.isabs(main):
            main = posixpath.join(_option(argv, "-d") or "/etc/apache2", main)
        return [posixpath.normpath(main)]

    def include_base(self, main: str, text: str, argv: Sequence[str]) -> str:
        root = _option(argv, "-d")
        if root is None:
            found = re.search(r'(?mi)^\s*ServerRoot\s+"?([^"\s]+)"?', text)
            root = found.group(1) if found else "/etc/apache2"
        return root

    def staged_argv(self, argv: Sequence[str], staged: Mapping[str, str]) -> list[str]:
        (main,) = staged.values()
        if _base(argv[0]) in self.CTL and list(argv[1:]) == ["configtest"]:
            return [argv[0], "-t", "-f", main]
        return _replace_option(argv, "-f", main) or [argv[0], "-f", main, *argv[1:]]

    def read_roots(self, argv: Sequence[str] | None, settings: Mapping[str, Any]) -> list[str]:
        roots = super().read_roots(argv, settings)
        if roots and argv:
            roots.append(_option(argv, "-d") or "/etc/apache2")
        return list(dict.fromkeys(roots))

    def check_text(self, path: str, text: str) -> None:
        for found in self.include.finditer(text) if self.include else ():
            if "${" in found.group("arg"):
                raise _CannotStage(f"{path} includes {found.group('arg')} (a variable)")


class _HAProxy(ServerTest):
    def recognise(self, argv: Sequence[str]) -> bool:
        return super().recognise(argv) and "-c" in argv[1:]

    def main_configs(self, argv: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        mains = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-f"]
        if not mains:
            mains = [_setting(settings, "configFile") or "/etc/haproxy/haproxy.cfg"]
        for main in mains:
            if not posixpath.isabs(main):
                raise _CannotStage(f"the config {main!r} is relative; give -f an absolute path")
        return [posixpath.normpath(m) for m in mains]

    def staged_argv(self, argv: Sequence[str], staged: Mapping[str, str]) -> list[str]:
        # -q silences haproxy's error messages too; a dry run is there to show them
        out = [arg for arg in argv if arg != "-q"]
        if "-f" not in out:
            return [*out, "-f", *staged.values()]
        for i, arg in enumerate(out[:-1]):
            if arg == "-f":
                out[i + 1] = staged[posixpath.normpath(out[i + 1])]
        return out

    def read_roots(self, argv: Sequence[str] | None, settings: Mapping[str, Any]) -> list[str]:
        if not argv or not self.recognise(argv):
            return []
        try:
            return self.main_configs(argv, settings)  # the files themselves, not /etc/haproxy
        except _CannotStage:
            return []


class _Caddy(ServerTest):
    def recognise(self, argv: Sequence[str]) -> bool:
        return super().recognise(argv) and len(argv) > 1 and argv[1] == "validate"

    def main_configs(self, argv: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        main = _option(argv, "--config") or _setting(settings, "configFile")
        if main is None or not posixpath.isabs(main):
            raise _CannotStage("caddy validate needs --config with an absolute path")
        return [posixpath.normpath(main)]

    def staged_argv(self, argv: Sequence[str], staged: Mapping[str, str]) -> list[str]:
        (main,) = staged.values()
        return _replace_option(argv, "--config", main) or [*argv, "--config", main]

    def read_roots(self, argv: Sequence[str] | None, settings: Mapping[str, Any]) -> list[str]:
        if not argv or not self.recognise(argv):
            return []
        try:
            return self.main_configs(argv, settings)
        except _CannotStage:
            return []

    def check_text(self, path: str, text: str) -> None:
        if re.search(r"(?m)^\s*import\s", text):
            raise _CannotStage(f"{path} uses `import`, which the staging does not follow")


NGINX: ServerTest = _Nginx(
    server="nginx",
    binaries=frozenset({"nginx", "openresty"}),
    include=re.compile(
        r"(?m)(?:^|(?<=[;{}]))[ \t]*include\s+(?P<q>[\"']?)(?P<arg>[^;\"'\s]+)(?P=q)\s*;"
    ),
)
APACHE: ServerTest = _Apache(
    server="apache",
    binaries=frozenset({"apachectl", "apache2ctl", "apache2", "httpd"}),
    loads_certificates=False,
    note=(
        "Apache's configtest does not load certificates: it checks the files exist, "
        "not that they parse or match (preflight checked that)"
    ),
    include=re.compile(r"(?mi)^[ \t]*Include(?:Optional)?[ \t]+(?P<q>\"?)(?P<arg>[^\"\s]+)(?P=q)"),
)
HAPROXY: ServerTest = _HAProxy(server="haproxy", binaries=frozenset({"haproxy"}))
CADDY: ServerTest = _Caddy(server="caddy", binaries=frozenset({"caddy"}))
_ALL = (NGINX, APACHE, HAPROXY, CADDY)


def read_only_config_test(argv: Sequence[str] | None) -> bool:
    """True if `argv` only checks a server's config (nginx -t, apachectl configtest, ...)."""
    return bool(argv) and any(test.recognise(argv) for test in _ALL)  # type: ignore[arg-type]


# -- the dry run ------------------------------------------------------------------------------


@dataclass
class _Stage:
    sandbox: Sandbox
    root: str
    configs: dict[str, str] = field(default_factory=dict)  # live config path -> text
    includes: dict[str, str] = field(default_factory=dict)  # include arg as written -> staged

    @property
    def transport(self) -> Any:
        return self.sandbox.transport

    def files(self, path: str) -> str:
        return f"{self.root}/files{path}"

    def conf(self, path: str) -> str:
        return f"{self.root}/conf{path}"

    def write(self, path: str, data: bytes) -> None:
        """Write `path` (inside the stage) with mode 0600, creating 0700 parents."""
        parent, name = posixpath.split(path)
        self.transport.makedirs(parent, 0o700)
        temp = self.transport.write_temp(parent, f".{name}.", data, 0o600, -1, -1)
        self.transport.rename(temp, path)


def dry_run_config_test(
    sandbox: Sandbox,
    *,
    target: str,
    work_dir: str,
    validate: Sequence[str] | None,
    test: ServerTest | None,
    settings: Mapping[str, Any],
    specs: Sequence[FileSpec],
    deletes: Sequence[str],
    lines: Sequence[str] = (),
) -> list[str]:
    """Run the config test against the new files; lines saying what ran and what it showed.

    Contract: a failing config test RAISES DryRunFailed (a ValidateFailed;
    message names the target and the command, `detail` holds the server's
    output); a test that passes or could not run RETURNS lines starting with
    "test    ". `lines` (what the caller found so far) ride on the exception.
    Never runs a reload; never writes outside a private stage in `work_dir`.
    """
    if not validate:
        return ["test    no validateCommand: new files not tested"]
    reason: str
    if test is None:
        reason = "this connector has no staged config test"
    elif not test.recognise(validate):
        reason = f"custom validateCommand ({' '.join(validate)}) cannot be pointed at staged files"
    else:
        try:
            return _staged(
                sandbox, target, work_dir, validate, test, settings, specs, deletes, lines
            )
        except _CannotStage as exc:
            reason = str(exc)
        except DryRunFailed:
            raise
        except CertgitError as exc:
            reason = f"staging refused: {exc}"
        except OSError as exc:
            reason = f"staging failed: {exc}"
    return _live(sandbox, target, validate, reason, lines)


def _live(
    sandbox: Sandbox, target: str, validate: Sequence[str], reason: str, lines: Sequence[str]
) -> list[str]:
    command = " ".join(validate)
    if not read_only_config_test(validate):
        return [
            f"test    new files not tested: {reason}; {command} is not a known read-only "
            "config test, so a dry run does not run it"
        ]
    result = sandbox.run(validate, timeout=TEST_TIMEOUT)
    if not result.ok:
        raise DryRunFailed(
            f"target {target}: the CURRENT config already fails {command} "
            f"(new files not tested: {reason})",
            target=target,
            detail=result.summary(),
            lines=lines,
        )
    return [f"test    new files not tested: {reason}; the current config passes {command}"]


def _staged(
    sandbox: Sandbox,
    target: str,
    work_dir: str,
    validate: Sequence[str],
    test: ServerTest,
    settings: Mapping[str, Any],
    specs: Sequence[FileSpec],
    deletes: Sequence[str],
    lines: Sequence[str],
) -> list[str]:
    mains = test.main_configs(validate, settings)
    transport = sandbox.transport
    transport.makedirs(work_dir, 0o700)
    root = f"{posixpath.normpath(work_dir)}/{STAGE_PREFIX}{secrets.token_hex(8)}"
    transport.makedirs(root, 0o700)
    made = transport.stat(root)
    if made is None or made.kind != "dir" or made.mode & 0o077 or transport.listdir(root):
        raise _CannotStage(f"could not create a private staging directory {root}")
    stage = _Stage(sandbox, root)
    try:
        _read_configs(stage, test, mains, validate)
        new = {spec.path: spec.content for spec in specs}
        copied = _copy_referenced_dirs(stage, new, deletes, specs)
        for path, data in new.items():
            stage.write(stage.files(path), data)
        rewrite = _rewriter(stage, [*new, *deletes, *copied])
        for path, text in stage.configs.items():
            staged_text = rewrite(_rewrite_includes(stage, test, text))
            stage.write(stage.conf(path), staged_text.encode("utf-8", "surrogateescape"))
        argv = test.staged_argv(validate, {m: stage.conf(m) for m in mains})
        result = sandbox.run(argv, timeout=TEST_TIMEOUT)
    finally:
        _remove_tree(transport, root)
    shown = " ".join(validate)
    if not result.ok:
        raise DryRunFailed(
            f"target {target}: {test.server} config test with the new files failed "
            f"({shown}, run on a staged copy)",
            target=target,
            detail=_unstage(result.summary(), root),
            lines=lines,
        )
    out = [f"test    {shown} passes with the new files (run on a staged copy)"]
    if test.note:
        out.append(f"note    {test.note}")
    return out


def _read_configs(
    stage: _Stage, test: ServerTest, mains: Sequence[str], argv: Sequence[str]
) -> None:
    queue = list(mains)
    base = ""
    while queue:
        path = queue.pop(0)
        if path in stage.configs:
            continue
        if len(stage.configs) >= MAX_CONFIG_FILES:
            raise _CannotStage(f"the config includes more than {MAX_CONFIG_FILES} files")
        data = stage.sandbox.read_bytes(path)
        if data is None:
            raise _CannotStage(f"the config file {path} does not exist")
        text = data.decode("utf-8", "surrogateescape")
        test.check_text(path, text)
        stage.configs[path] = text
        if not base:
            base = test.include_base(path, text, argv)
        for found in test.include.finditer(text) if test.include else ():
            arg = found.group("arg")
            queue.extend(_expand_include(stage, arg, base))


def _expand_include(stage: _Stage, arg: str, base: str) -> list[str]:
    """The files an include argument names (globs expanded); records its staged spelling."""
    absolute = posixpath.normpath(arg if posixpath.isabs(arg) else posixpath.join(base, arg))
    directory, pattern = posixpath.split(absolute)
    if _GLOB.search(directory):
        raise _CannotStage(f"include {arg} has a wildcard in a directory name")
    stage.includes[arg] = stage.conf(absolute)
    if not _GLOB.search(pattern):
        found = stage.sandbox.stat(absolute)
        if found is None or found.kind != "dir":
            return [absolute]
        directory, pattern = absolute, "*"  # Apache: a directory includes every file in it
    resolved = stage.sandbox.check_read(directory)
    out: list[str] = []
    for name in stage.transport.listdir(resolved):
        if name.startswith(".") or not fnmatch.fnmatchcase(name, pattern):
            continue
        candidate = f"{directory.rstrip('/')}/{name}"
        found = stage.sandbox.stat(candidate)
        if found is not None and found.kind in ("file", "symlink"):
            out.append(candidate)
    return sorted(out)


def _rewrite_includes(stage: _Stage, test: ServerTest, text: str) -> str:
    if test.include is None:
        return text

    def swap(found: re.Match[str]) -> str:
        arg = found.group("arg")
        staged = stage.includes.get(arg)
        if staged is None:
            return found.group(0)
        start, end = found.span("arg")
        offset = found.start()
        whole = found.group(0)
        return whole[: start - offset] + staged + whole[end - offset :]

    return test.include.sub(swap, text)


def _dir_reference(directory: str) -> re.Pattern[str]:
    # the directory itself (`crt /dir/`, `crt-base /dir`) or a variable/glob file in it
    return re.compile(
        rf"(?<![\w.\-/]){re.escape(directory)}(?:/?(?!{_PATH_CHAR}|/)|/(?=[$*?\[{{%]))"
    )


def _copy_referenced_dirs(
    stage: _Stage, new: Mapping[str, bytes], deletes: Sequence[str], specs: Sequence[FileSpec]
) -> list[str]:
    """Copy into the stage each certificate directory the config names as a whole."""
    directories = sorted({posixpath.dirname(p) for p in [*new, *deletes]})
    copied: list[str] = []
    for directory in directories:
        pattern = _dir_reference(directory)
        if not any(pattern.search(text) for text in stage.configs.values()):
            continue
        resolved = stage.sandbox.check_read(directory)
        for name in stage.transport.listdir(resolved):
            path = f"{directory}/{name}"
            if path in new or path in deletes or name.endswith(".tmp"):
                continue
            found = stage.sandbox.stat(path)
            if found is None or found.kind not in ("file", "symlink"):
                continue
            data = stage.sandbox.read_bytes(path)
            if data is not None:
                stage.write(stage.files(path), data)
        stage.transport.makedirs(stage.files(directory), 0o700)
        copied.append(directory)
    return copied


def _rewriter(stage: _Stage, paths: Iterable[str]) -> Any:
    keys = sorted(set(paths), key=len, reverse=True)
    if not keys:
        return lambda text: text
    alternation = "|".join(re.escape(k) for k in keys)
    pattern = re.compile(rf"(?<![\w.\-/])(?:{alternation})(?!{_PATH_CHAR})")
    return lambda text: pattern.sub(lambda m: stage.files(m.group(0)), text)


def _unstage(text: str, root: str) -> str:
    """Server output with staged paths shown as the live paths they stand for."""
    return text.replace(f"{root}/files/", "/").replace(f"{root}/conf/", "/")


def _remove_tree(transport: Any, path: str) -> None:
    """Remove the stage: every file (keys first of all), then the directories."""
    for name in transport.listdir(path):
        child = f"{path}/{name}"
        found = transport.stat(child)
        if found is not None and found.kind == "dir":
            _remove_tree(transport, child)
        else:
            transport.unlink(child)
    _rmdir(transport, path)


def _rmdir(transport: Any, path: str) -> None:
    rmdir = getattr(transport, "rmdir", None)
    if rmdir is not None:
        rmdir(path)
        return
    from certgit.connectors.sdk.transport import LocalTransport

    if isinstance(transport, LocalTransport):
        import os

        os.rmdir(path)
