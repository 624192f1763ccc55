"""`certgit init DIR`: a starter desired-state repository that `certgit validate DIR`
accepts (a local CA, one certificate, one `files` target, an approval policy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

MODELINE = "# yaml-language-server: $schema=../certgit.schema.json\n"

STARTER: dict[str, str] = {
    "issuers/internal-ca.yaml": """\
# A local CA: certgit creates it in the state directory on first use.
apiVersion: certgit.dev/v1
kind: Issuer
metadata:
  name: internal-ca
spec:
  type: local-ca
  localCA:
    commonName: internal CA
""",
    "certificates/www.yaml": """\
apiVersion: certgit.dev/v1
kind: Certificate
metadata:
  name: www
  labels:
    team: web
spec:
  commonName: www.example.com
  dnsNames: [www.example.com]
  key:
    algorithm: ECDSA
    size: 256
  issuerRef:
    name: internal-ca
  duration: 90d
  deployTo:
    - target: web
""",
    "targets/web.yaml": """\
# Writes PEM files; a relative directory lives under the state directory.
apiVersion: certgit.dev/v1
kind: Target
metadata:
  name: web
  labels:
    env: production
spec:
  type: files
  transport:
    type: local
  settings:
    directory: targets/web
""",
    "policies/production.yaml": """\
# Changes to what production serves wait for `certgit approve`.
apiVersion: certgit.dev/v1
kind: Policy
metadata:
  name: production-gate
spec:
  approvals:
    - name: production-changes
      match:
        targetLabels:
          env: production
        actions: [deploy, remove]
""",
}


def scaffold(directory: Path) -> list[Path]:
    """Write the starter files (and certgit.schema.json for editors) into `directory`.

    Refuses to overwrite: raises FileExistsError naming the first file that exists."""
    import json

    from certgit.reconciler.cli_schema import bundled_schema

    files = {name: MODELINE + text for name, text in STARTER.items()}
    files["certgit.schema.json"] = json.dumps(bundled_schema(), indent=2) + "\n"
    for name in files:
        if (directory / name).exists():
            raise FileExistsError(f"{directory / name} already exists: nothing was written")
    written = []
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def cmd_init_repo(args: Any, out: TextIO, err: TextIO) -> int:
    directory = Path(args.directory)
    try:
        written = scaffold(directory)
    except FileExistsError as exc:
        print(f"error: {exc}", file=err)
        return 1
    if getattr(args, "json", False):
        import json

        json.dump({"directory": str(directory), "created": [str(p) for p in written]}, out)
        out.write("\n")
        return 0
    for path in written:
        print(f"  created {path}", file=out)
    print(f"starter desired state in {directory}: check it with `certgit validate "
          f"{directory}`, commit it to Git, then `certgit plan --repo <that repository>`",
          file=out)
    return 0
