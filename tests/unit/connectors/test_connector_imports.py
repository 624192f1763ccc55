"""Connectors do all I/O through the Sandbox: no I/O module imports, no open(), no Path writes.

Walks the AST of every module registered in the `certgit.connectors` entry-point
group whose file exists (helpers may still be writing some), and proves the
check bites on small fake modules.
"""

from __future__ import annotations

import ast
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

import pytest

FORBIDDEN_MODULES = frozenset(
    {
        "os",
        "subprocess",
        "socket",
        "shutil",
        "ssl",
        "paramiko",
        "httpx",
        "http.client",
        "urllib.request",
        "fcntl",
        "pathlib",  # Path(...).write_* / .open(): go through the sandbox
        "tempfile",
        "requests",
        "urllib3",
        "pty",
        "multiprocessing",
        "ctypes",
        "posix",
        "builtins",
        "importlib",
    }
)
FORBIDDEN_CALLS = frozenset({"open", "exec", "eval", "__import__", "compile"})
FORBIDDEN_METHODS = frozenset(
    # pathlib's I/O methods; not `replace`/`rename`, which str has too
    {
        "open",
        "write_text",
        "write_bytes",
        "read_text",
        "read_bytes",
        "unlink",
        "mkdir",
        "touch",
        "chmod",
        "symlink_to",
        "rmdir",
        "iterdir",
        "glob",
        "rglob",
    }
)


# Sandbox has methods of the same names (sandbox.read_bytes(...)): allowed on a sandbox only.
def _is_sandbox(receiver: str) -> bool:
    return receiver.rsplit(".", 1)[-1].lower().endswith("sandbox")


def _forbidden_module(name: str) -> str | None:
    for banned in FORBIDDEN_MODULES:
        if name == banned or name.startswith(banned + "."):
            return banned
    # `import http` then http.client; `import urllib` then urllib.request
    if name in {"http", "urllib"}:
        return name
    return None


def _receiver(node: ast.expr) -> str:
    return ast.unparse(node)


def violations(source: str, filename: str = "<module>") -> list[str]:
    """Every direct I/O a connector module's source does, as 'file:line: what'."""
    tree = ast.parse(source, filename=filename)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if banned := _forbidden_module(alias.name):
                    found.append(f"{filename}:{node.lineno}: import {alias.name} ({banned})")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                for name in [module] + [f"{module}.{a.name}" for a in node.names]:
                    if banned := _forbidden_module(name):
                        found.append(f"{filename}:{node.lineno}: from {module} import ({banned})")
                        break
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{filename}:{node.lineno}: call {func.id}()")
            elif (
                isinstance(func, ast.Attribute)
                and func.attr in FORBIDDEN_METHODS
                and not _is_sandbox(_receiver(func.value))
            ):
                found.append(f"{filename}:{node.lineno}: call .{func.attr}() outside the sandbox")
    return found


def _connector_modules() -> list[tuple[str, Path]]:
    modules: dict[str, Path] = {}
    for ep in entry_points(group="certgit.connectors"):
        module = ep.value.split(":", 1)[0]
        if not module.startswith("certgit.connectors."):
            continue  # third-party connectors are their authors' business
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            continue
        if spec is None or spec.origin is None or not Path(spec.origin).exists():
            continue  # registered, not written yet
        modules[ep.name] = Path(spec.origin)
        # a connector package: check every module inside it
        if spec.submodule_search_locations:
            for sub in sorted(Path(spec.origin).parent.rglob("*.py")):
                modules[f"{ep.name}:{sub.name}"] = sub
    return sorted(modules.items())


CONNECTOR_MODULES = _connector_modules()


def test_the_files_connector_is_checked() -> None:
    assert "files" in dict(CONNECTOR_MODULES)


@pytest.mark.parametrize(("name", "path"), CONNECTOR_MODULES, ids=[n for n, _ in CONNECTOR_MODULES])
def test_connector_module_does_no_direct_io(name: str, path: Path) -> None:
    problems = violations(path.read_text(), str(path))
    assert problems == [], f"connector {name} bypasses the sandbox:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "import os\n",
        "import os.path\n",
        "from os import path\n",
        "import subprocess as sp\n",
        "from socket import create_connection\n",
        "import shutil\n",
        "import ssl\n",
        "import paramiko\n",
        "import httpx\n",
        "from http import client\n",
        "import http.client\n",
        "from urllib.request import urlopen\n",
        "import fcntl\n",
        "from pathlib import Path\n",
        "def f(p):\n    return open(p).read()\n",
        "def f(p):\n    p.write_bytes(b'x')\n",
        "def f(p):\n    with p.open('w') as fh:\n        fh.write('x')\n",
        "def f():\n    return __import__('os')\n",
        "def f(target):\n    target.work_dir.write_text('x')\n",
        "import importlib\n",
    ],
)
def test_the_check_bites(source: str) -> None:
    assert violations(source), f"not flagged:\n{source}"


def test_sandbox_calls_and_sdk_imports_pass() -> None:
    source = (
        "from certgit.connectors.sdk.base import FileConnector\n"
        "import hashlib\n"
        "def observe(sandbox, path):\n"
        "    data = sandbox.read_bytes(path)\n"
        "    return hashlib.sha256(data or b'').hexdigest()\n"
    )
    assert violations(source) == []
