"""The site policy: TOML reading with positions, safe defaults, bounds and grants, gates."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from certgit.connectors.sdk.grants import Grants
from certgit.reconciler.config import SettingsError, resolve_settings
from certgit.reconciler.engine import Engine
from certgit.reconciler.gates import change, gates_hash, git_gates, held_over
from certgit.reconciler.model import ApprovalHook, ApprovalRule, DesiredState, Policy, Target
from certgit.reconciler.sitebounds import bounds_for
from certgit.reconciler.siteload import describe, load_site_policy
from certgit.reconciler.sitepolicy import CommandRule, SitePolicy, SitePolicyError, scrub_env


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(SitePolicyError) as caught:
        load_site_policy(write(tmp_path, text))
    return [str(p).split(": ", 1)[0].rsplit("/", 1)[-1] + ": " + p.message
            for p in caught.value.problems]


# ------------------------------------------------------------------ reading


def test_every_problem_is_positioned_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "[paths]\n"
        'allow = ["relative", "/"]\n'
        "alow = 1\n"
        "[commands]\n"
        'allow = [["nginx", "-t"], { under = "/" }]\n'
        "[env]\n"
        'passthrough = ["PATH", "CERTGIT_*"]\n'
        "[limits]\n"
        'maxDuration = "1000y"\n'
        'keyTypes = ["DSA"]\n',
    )
    assert found[0].startswith("site.toml:2:1: paths.allow: 'relative' is not an absolute path")
    assert any(f.startswith("site.toml:2:1: paths.allow: '/' would let Git write anywhere")
               for f in found)
    assert (
        "site.toml:3:1: unknown key 'paths.alow'; known keys here: allow, builtin, groups, owners"
        in found
    )
    assert any(f.startswith("site.toml:5:1: commands.allow[0]: 'nginx' must be an absolute")
               for f in found)
    assert any("commands.allow[1].under must be an absolute directory other than /" in f
               for f in found)
    assert any(f.startswith("site.toml:7:1: env.passthrough 'CERTGIT_*'") for f in found)
    assert any(f.startswith("site.toml:9:1: limits.maxDuration") for f in found)
    assert any(f.startswith("site.toml:10:1: limits.keyTypes: 'DSA'") for f in found)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    [found] = problems(tmp_path, "[paths]\nallow = [\"/srv\"\n")
    assert found.startswith("site.toml:2:16: Unclosed array"), found
    assert "fix the TOML syntax" in found


def test_keys_after_a_scope_header_belong_to_the_scope(tmp_path: Path) -> None:
    # A classic TOML trap: a top-level key written after [[scope]] is the scope's.
    found = problems(tmp_path, '[[scope]]\nname = "w"\ntargets = ["w"]\ntargetTypes = ["files"]\n')
    assert found == [
        "site.toml:4:1: unknown key 'scope[0].targetTypes'; known keys here: commands, "
        "endpoints, labels, name, paths, targets, types"
    ]


def test_a_policy_others_can_write_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "", mode=0o646)
    with pytest.raises(SitePolicyError, match=r"writable by others.*chmod go-w"):
        load_site_policy(path)


def test_missing_policy_file_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    with pytest.raises(SitePolicyError, match="not found"):
        load_site_policy(tmp_path / "nope.toml")


def test_the_shipped_example_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    policy = load_site_policy(root / "reconciler/examples/site.toml")
    assert policy.approvals[0].target_labels == {"env": "production"}
    assert describe(policy)["limits"]["maxDuration"] == "825d"


def test_site_table_in_certgit_toml_and_flag_precedence(tmp_path: Path) -> None:
    config = tmp_path / "certgit.toml"
    config.write_text('[site.paths]\nallow = ["/srv/inline"]\n')
    env = {"HOME": str(tmp_path)}
    # found in the working directory (maybe a checkout of the repository): refused
    with pytest.raises(SettingsError, match=r"found in the working directory"):
        resolve_settings({}, env=env, cwd=tmp_path)
    settings = resolve_settings({"config": str(config)}, env=env, cwd=tmp_path)
    engine = Engine(settings, env=env)
    assert engine.site.allow.paths == ("/srv/inline",)
    assert engine.site.source == "certgit.toml [site]"
    flagged = write(tmp_path, '[paths]\nallow = ["/srv/flag"]\n')
    settings = resolve_settings(
        {"site_policy": str(flagged), "config": str(config)}, env=env, cwd=tmp_path
    )
    assert Engine(settings, env=env).site.allow.paths == ("/srv/flag",)


# ------------------------------------------------------------------ bounds


def test_defaults_allow_the_state_targets_and_the_connectors_own_directory(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    files = bounds_for(SitePolicy(), "t", "files", {}, state)
    assert files.path_problem(str(state / "targets/t")) is None
    assert "outside the directories" in (files.path_problem("/srv/x") or "")
    assert "never a target" in (files.path_problem(str(state)) or "")
    assert "never a target" in (files.path_problem(str(state / "work/t")) or "")
    nginx = bounds_for(SitePolicy(), "n", "nginx", {}, state)
    assert nginx.path_problem("/etc/nginx/ssl") is None
    assert files.path_problem("/etc/nginx/ssl") is not None  # not for other types


def test_deny_list_wins_over_an_allowed_root(tmp_path: Path) -> None:
    policy = load_site_policy(write(tmp_path, '[paths]\nallow = ["/home", "/etc"]\n'))
    bounds = bounds_for(policy, "t", "files", {}, tmp_path / "state")
    assert "'.ssh'" in (bounds.path_problem("/home/alice/.ssh") or "")
    assert "'sudoers.d'" in (bounds.path_problem("/etc/sudoers.d") or "")
    assert "/etc/shadow" in (bounds.path_problem("/etc/shadow") or "")
    assert bounds.path_problem("/etc/ssl/mine") is None


def test_a_symlink_under_an_allowed_root_is_judged_where_it_leads(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    policy = load_site_policy(write(tmp_path, f'[paths]\nallow = ["{allowed}"]\n'))
    bounds = bounds_for(policy, "t", "files", {}, tmp_path / "state")
    assert bounds.path_problem(str(allowed / "real")) is None
    problem = bounds.path_problem(str(allowed / "link"))
    assert problem is not None and f"resolves to {outside}" in problem


def test_commands_exact_prefix_under_and_on_path(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "reload").write_text("#!/bin/sh\n")
    sh = shutil.which("sh")
    assert sh is not None
    policy = load_site_policy(
        write(
            tmp_path,
            "[commands]\nallow = [\n"
            f'  ["{sh}", "-c", "true"],\n'
            '  { prefix = ["/usr/bin/env", "FOO=1"] },\n'
            f'  {{ under = "{hooks}" }},\n'
            "]\n",
        )
    )
    bounds = bounds_for(policy, "t", "files", {}, tmp_path / "state")
    assert bounds.command_problem(["sh", "-c", "true"]) is None  # found on PATH, realpath'd
    assert bounds.command_problem(["sh", "-c", "true", "x"]) is not None  # exact means exact
    assert bounds.command_problem(["sh", "-c", "id"]) is not None
    assert bounds.command_problem(["/usr/bin/env", "FOO=1", "anything"]) is None
    assert bounds.command_problem(["/usr/bin/env", "BAR=1"]) is not None
    assert bounds.command_problem([str(hooks / "reload"), "--any"]) is None
    assert bounds.command_problem([str(hooks / ".." / "x")]) is not None
    assert "not found on PATH" in (bounds.command_problem(["no-such-binary-xyz"]) or "")


def test_endpoints_exact_host_any_port_and_loopback_default(tmp_path: Path) -> None:
    policy = load_site_policy(
        write(tmp_path, '[endpoints]\nallow = ["lb.example:443", "[2001:db8::1]:*"]\n')
    )
    bounds = bounds_for(policy, "t", "files", {}, tmp_path / "state")
    assert bounds.endpoint_problem("127.0.0.1:8443") is None
    assert bounds.endpoint_problem("[::1]:1") is None
    assert bounds.endpoint_problem("LB.example.:443") is None
    assert bounds.endpoint_problem("lb.example:444") is not None
    assert bounds.endpoint_problem("lb.example.evil.com:443") is not None
    assert bounds.endpoint_problem("[2001:db8:0::1]:9") is None
    assert bounds.endpoint_problem("10.0.0.1:22") is not None


def test_scopes_add_only_for_the_targets_they_match(tmp_path: Path) -> None:
    policy = load_site_policy(
        write(
            tmp_path,
            '[[scope]]\nname = "web"\ntargets = ["web-1"]\ntypes = ["nginx"]\n'
            'paths = ["/srv/web"]\n',
        )
    )
    state = tmp_path / "state"
    assert bounds_for(policy, "web-1", "nginx", {}, state).path_problem("/srv/web") is None
    assert bounds_for(policy, "web-2", "nginx", {}, state).path_problem("/srv/web") is not None
    assert bounds_for(policy, "web-1", "files", {}, state).path_problem("/srv/web") is not None


def test_restrict_intersects_the_connectors_grants_with_the_site(tmp_path: Path) -> None:
    state = tmp_path / "state"
    policy = load_site_policy(
        write(tmp_path, '[paths]\nallow = ["/srv/certs/web"]\n[endpoints]\nloopback = false\n')
    )
    bounds = bounds_for(policy, "t", "files", {}, state)
    declared = Grants(
        fs_read=("/etc/nginx",),
        fs_write=("/srv", "/etc", "/srv/certs/web/a"),
        net_dial=("127.0.0.1:443",),
        process_exec=("/bin/sh",),
    )
    got = bounds.restrict(declared)
    # /srv contains the root: narrowed to it; /etc has nothing allowed; a/ is inside
    assert got.fs_write == ("/srv/certs/web", "/srv/certs/web/a")
    assert got.net_dial == ()  # loopback switched off, nothing else allowed
    assert got.process_exec == ()  # no command allows /bin/sh
    assert got.allows_write("/srv/certs/web/x.pem")
    assert not got.allows_write("/srv/other/x.pem")
    assert not got.allows_write("/srv/certs/web/.ssh/authorized_keys")
    assert got.allows_read("/etc/nginx/nginx.conf")  # reads stay as declared...
    assert not got.allows_read(f"{state}/master.key")  # ...minus the deny list


def test_child_env_never_carries_certgit_secrets() -> None:
    environ = {"PATH": "/bin", "LC_ALL": "C", "CERTGIT_MASTER_KEY": "00", "AWS_SECRET": "x"}
    assert scrub_env(environ, ("PATH", "LC_*", "CERTGIT_*", "*")) == {
        "PATH": "/bin", "LC_ALL": "C", "AWS_SECRET": "x"
    }
    assert SitePolicy().child_env(environ) == {"PATH": "/bin", "LC_ALL": "C"}


def test_command_rule_matching_resolves_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real-nginx"
    real.write_text("")
    link = tmp_path / "nginx"
    link.symlink_to(real)
    rule = CommandRule((str(real), "-t"))
    assert rule.matches([str(link), "-t"])
    assert rule.allows_binary(str(link))
    assert not rule.matches([str(link), "-T"])
    assert os.path.realpath(link) == str(real)


# ------------------------------------------------------------------ gates


def _desired(policies: dict[str, Policy], hook: bool = False) -> DesiredState:
    return DesiredState(
        commit="c",
        targets={
            "web-1": Target(
                name="web-1", type="files", labels={"env": "production"},
                approval=ApprovalHook() if hook else None,
            )
        },
        policies=policies,
    )


PROD = Policy("prod", approvals=(ApprovalRule("changes", target_labels={"env": "production"}),))


def test_adding_gates_is_no_change_removing_or_narrowing_is() -> None:
    before = git_gates(_desired({"prod": PROD}))
    assert change(before, git_gates(_desired({"prod": PROD}, hook=True))) is None
    removed = change(before, git_gates(_desired({})))
    assert removed is not None and removed.lines == ("- policy prod/changes",)
    narrowed = Policy(
        "prod", approvals=(ApprovalRule("changes", target_labels={"env": "prod-eu"}),)
    )
    changed = change(before, git_gates(_desired({"prod": narrowed})))
    assert changed is not None and changed.lines[0].startswith("~ policy prod/changes: ")
    assert changed.hash == gates_hash(git_gates(_desired({"prod": narrowed})))


def test_a_removed_gate_is_held_over_as_a_rule_or_hook() -> None:
    before = git_gates(_desired({"prod": PROD}, hook=True))
    held = held_over(before, git_gates(_desired({})))
    labels = sorted(h.label.split(" (")[0] for h in held)
    assert labels == ["policy prod/changes", "target web-1 approval"]
    [rule] = [h.rule for h in held if h.rule is not None]
    assert rule.target_labels == {"env": "production"}


def test_an_unknown_table_is_positioned_at_its_header(tmp_path: Path) -> None:
    found = problems(tmp_path, '[paths]\nallow = ["/x"]\n[bogus]\n[signatures.typo]\nx = 1\n')
    assert found == [
        "site.toml:3:1: unknown key 'bogus'; known keys here: approvals, audit, commands, "
        "endpoints, env, issuers, limits, paths, scope, secrets, signatures, targetTypes",
        "site.toml:4:1: unknown key 'signatures.typo'; known keys here: allowedSigners, "
        "gpgHome, required",
    ]


def test_relabelling_a_gated_target_out_of_a_rule_holds_the_rule_for_it() -> None:
    before = git_gates(_desired({"prod": PROD}))
    relabelled = _desired({"prod": PROD})
    relabelled = DesiredState(
        commit="c2",
        targets={"web-1": Target(name="web-1", type="files", labels={"env": "staging"})},
        policies=relabelled.policies,
    )
    after = git_gates(relabelled)
    assert before["policy prod/changes"]["matchedTargets"] == ["web-1"]
    assert after["policy prod/changes"]["matchedTargets"] == []
    [held] = held_over(before, after)
    assert held.rule is not None and held.rule.targets == ("web-1",)
    assert held.rule.target_labels == {}
    found = change(before, after)
    assert found is not None
    assert found.lines == ("~ policy prod/changes no longer matches target web-1",)
    # a new production target joining the rule only adds to the gate
    grown = DesiredState(
        commit="c3",
        targets={
            "web-1": Target(name="web-1", type="files", labels={"env": "production"}),
            "web-2": Target(name="web-2", type="files", labels={"env": "production"}),
        },
        policies=relabelled.policies,
    )
    assert change(before, git_gates(grown)) is None
    assert held_over(before, git_gates(grown)) == ()


def test_what_decides_what_runs_must_be_the_operators_alone(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir(mode=0o777)
    hooks.chmod(0o777)  # the umask may have narrowed mkdir's mode
    with pytest.raises(SitePolicyError, match=r"hook directory .* is writable by others"):
        load_site_policy(write(tmp_path, f'[commands]\nallow = [{{ under = "{hooks}" }}]\n'))
    hooks.chmod(0o755)
    policy = load_site_policy(write(tmp_path, f'[commands]\nallow = [{{ under = "{hooks}" }}]\n'))
    script = hooks / "reload"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o757)  # anyone may rewrite it, and it would run as certgit's user
    bounds = bounds_for(policy, "t", "files", {}, tmp_path / "state")
    problem = bounds.command_problem([str(script)])
    assert problem is not None and "is writable by others" in problem, problem
    script.chmod(0o755)
    assert bounds.command_problem([str(script)]) is None
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    signers.chmod(0o666)
    with pytest.raises(SitePolicyError, match=r"allowed signers file .* writable by others"):
        load_site_policy(
            write(tmp_path, f'[signatures]\nrequired = true\nallowedSigners = "{signers}"\n')
        )
