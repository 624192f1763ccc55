"""The distribution installs certgit.<part> only, ships its data, and keeps its layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run_py(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_parts_install_under_certgit_and_never_bare(tmp_path: Path) -> None:
    # Run from an unrelated directory so the checkout itself is not on sys.path.
    code = (
        "import importlib.util as u\n"
        "for part in ('reconciler', 'connectors', 'tui', 'schemas'):\n"
        "    assert u.find_spec('certgit.' + part) is not None, part\n"
        "    assert u.find_spec(part) is None, 'bare package installed: ' + part\n"
        "from importlib.resources import files\n"
        "names = {p.name for p in files('certgit.schemas').iterdir()}\n"
        "for kind in ('issuer', 'certificate', 'target', 'policy'):\n"
        "    assert kind + '.schema.json' in names, names\n"
        "store = files('certgit.reconciler.store')\n"
        "sql = [p.name for p in store.joinpath('migrations').iterdir()]\n"
        "assert any(n.endswith('.sql') for n in sql), sql\n"
        "print('ok')\n"
    )
    r = run_py(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_console_script_and_module_entry(tmp_path: Path) -> None:
    for argv in (
        [str(BIN / "certgit"), "--help"],
        [sys.executable, "-m", "certgit.reconciler", "--help"],
    ):
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        for command in ("validate", "plan", "status", "audit"):
            assert command in r.stdout


def test_validate_does_not_pay_for_git_or_tui(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from certgit.reconciler.cli import main\n"
        f"rc = main(['validate', {str(ROOT / 'sample-repo')!r}])\n"
        "heavy = [m for m in ('pygit2', 'textual', 'paramiko', 'httpx') if m in sys.modules]\n"
        "assert rc == 0 and not heavy, (rc, heavy)\n"
    )
    r = run_py(code, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_layers_contract() -> None:
    """import-linter: tui -> reconciler -> connectors, schemas imports no other layer."""
    r = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" not in r.stdout.lower() or "0 broken" in r.stdout.lower()


def test_no_bare_layer_imports_anywhere() -> None:
    """Belt and braces for ruff TID251: no module imports a bare layer name."""
    import ast

    bare = {"reconciler", "connectors", "tui", "schemas"}
    offenders = []
    for folder in ("reconciler", "connectors", "tui", "schemas", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [f"{path}:{node.lineno}" for n in names if n.split(".")[0] in bare]
    assert offenders == []
