"""`certgit site show`: the site policy in force, where it comes from and what it allows."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

EXIT_OK = 0


def example_text() -> str:
    """The shipped example policy (reconciler/examples/site.toml)."""
    return (
        resources.files("certgit.reconciler")
        .joinpath("examples/site.toml")
        .read_text(encoding="utf-8")
    )


def cmd_site(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from certgit.reconciler.cli import _emit_json, _engine
    from certgit.reconciler.siteload import describe

    if getattr(args, "example", False):
        out.write(example_text())
        return EXIT_OK
    engine = _engine(args, create=False)
    try:
        policy = engine.site  # SitePolicyError (positioned) when the file is invalid
        state_dir = engine.settings.state_dir
    finally:
        engine.close()
    data = describe(policy)
    from certgit.reconciler.sitebounds import builtin_defaults

    defaults = builtin_defaults()
    data["builtinDirectories"] = {
        name: d.directory for name, d in sorted(defaults.items()) if d.directory
    }
    data["builtinCommands"] = {
        name: [" ".join(argv) for argv in d.commands]
        for name, d in sorted(defaults.items())
        if d.commands
    }
    data["stateTargets"] = str(Path(state_dir).absolute() / "targets")
    if args.json:
        _emit_json({"site": data}, out)
        return EXIT_OK
    out.write(render(data, policy.is_default))
    return EXIT_OK


def render(data: dict[str, Any], is_default: bool) -> str:
    lines: list[str] = []
    if is_default:
        lines.append(
            "site policy: built-in defaults (no --site-policy, CERTGIT_SITE_POLICY, "
            "certgit.toml [site] or /etc/certgit/site.toml)"
        )
    else:
        lines.append(f"site policy: {data['source']}")
    lines.append("")
    lines.append("file targets may write under:")
    lines.append(f"  {data['stateTargets']}  (the state directory's targets/)")
    if data["paths"]["builtin"]:
        for name, directory in data["builtinDirectories"].items():
            lines.append(f"  {directory}  ({name} targets only)")
    lines += [f"  {p}" for p in data["paths"]["allow"]]
    owners = ", ".join(data["paths"]["owners"]) or "none"
    groups = ", ".join(data["paths"]["groups"]) or "none"
    lines.append(f"file owners Git may set: {owners}; groups: {groups}")
    lines.append("commands targets may run:")
    if data["commands"]["builtin"]:
        for name, commands in data["builtinCommands"].items():
            lines.append(f"  {'; '.join(commands)}  ({name} targets only)")
    lines += [f"  {c}" for c in data["commands"]["allow"]]
    if not data["commands"]["builtin"] and not data["commands"]["allow"]:
        lines.append("  none")
    lines.append("endpoints certgit may dial:")
    if data["endpoints"]["loopback"]:
        lines.append("  loopback (127.0.0.1, [::1], localhost), any port")
    lines += [f"  {e}" for e in data["endpoints"]["allow"]]
    for scope in data["scopes"]:
        match = ", ".join(
            part
            for part in (
                f"targets {', '.join(scope['targets'])}" if scope["targets"] else "",
                f"types {', '.join(scope['types'])}" if scope["types"] else "",
                "labels " + ", ".join(f"{k}={v}" for k, v in scope["labels"].items())
                if scope["labels"]
                else "",
            )
            if part
        )
        lines.append(f"scope {scope['name']} ({match}) adds:")
        lines += [f"  path {p}" for p in scope["paths"]]
        lines += [f"  command {c}" for c in scope["commands"]]
        lines += [f"  endpoint {e}" for e in scope["endpoints"]]
    types = data["targetTypes"]
    lines.append(f"target types: {', '.join(types) if isinstance(types, list) else types}")
    lines.append(f"issuer types: {', '.join(data['issuers'])}")
    limits = data["limits"]
    lines.append(
        f"limits: {limits['maxCertificates']} certificates, {limits['maxSansPerCertificate']} "
        f"SANs each, duration at most {limits['maxDuration']}, keys "
        f"{', '.join(limits['keyTypes'])}"
    )
    approvals = data["approvals"]
    lines.append("approval gates Git cannot remove:" + ("" if approvals else " none"))
    for rule in approvals:
        match = "; ".join(
            f"{k} " + (", ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict)
                       else ", ".join(v))
            for k, v in rule["match"].items()
        )
        lines.append(f"  {rule['name']}: {match or 'every action'}")
    lines.append(f"child environment: {', '.join(data['env']['passthrough'])} (never CERTGIT_*)")
    secrets = data["secrets"]
    lines.append(
        "secretRefs may read: env "
        + (", ".join(secrets["env"]) or "none")
        + "; files under "
        + (", ".join(secrets["files"]) or "none")
    )
    signatures = data["signatures"]
    if signatures["required"]:
        lines.append(
            "signed commits required: allowed signers "
            f"{signatures['allowedSigners'] or '-'}, GPG home {signatures['gpgHome'] or '-'}"
        )
    else:
        lines.append("signed commits: not required")
    lines.append(f"audit to syslog: {'yes' if data['audit']['syslog'] else 'no'}")
    lines.append("never writable: " + ", ".join(data["neverWritable"]))
    return "\n".join(lines) + "\n"
