"""Malicious commits against the site policy (issue 14): each refused before anything runs.

Every attack is a commit on top of the good, applied commit of a `Lab` (see
conftest.py), run under the built-in defaults and under a strict policy.
`Lab.refused` asserts exit codes, FILE:LINE:COL with the rule, an unchanged
disk (bytes, modes, mtimes), no sentinel, and the last good commit in force.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.security.conftest import (
    EXIT_ERROR,
    ISSUER,
    Attack,
    Lab,
    certificate_yaml,
    make_lab,
    position,
    target_yaml,
)

OUTSIDE = "is outside the directories the site policy allows"
NEVER = "is never writable"
STATE = "which is never a target"
COMMAND = "is not allowed by the site policy"
ENDPOINT = "is not allowed by the site policy"
SECRET_NEVER = "is never readable by a secretRef"

ATTACKS: dict[str, Callable[[Lab], Attack]] = {}


def attack(function: Callable[[Lab], Attack]) -> Callable[[Lab], Attack]:
    ATTACKS[function.__name__] = function
    return function


def strict_only(lab: Lab, why: str) -> None:
    if lab.kind != "strict":
        pytest.skip(f"only under the strict policy: {why}")


# A new SAN for www: with it, an accepted commit would deploy new files to web and run
# its validate/reload commands (a settings change alone redeploys identical bytes: no-op).
RENEW = {"certs/www.yaml": certificate_yaml("www", dns=["www.example.test", "new.example.test"])}


def web_with(lab: Lab, settings: str = "", *, directory: str | None = None) -> dict[str, str]:
    """The good commit's web Target with extra settings lines and/or another directory."""
    text = target_yaml("web", lab.web_directory if directory is None else directory,
                       settings=settings)
    return {"targets/web.yaml": text}


def web_running(lab: Lab, settings: str) -> dict[str, str]:
    """web with these command settings, and a new certificate that would make them run."""
    return {**RENEW, **web_with(lab, settings)}


def with_directory(lab: Lab, directory: str, needle: str | None = None,
                   rule: str = OUTSIDE, sentinels: tuple[Path, ...] = ()) -> Attack:
    files = web_with(lab, directory=directory)
    return Attack(files, position(files, "targets/web.yaml", needle or directory), rule,
                  sentinels)


def www_files(lab: Lab, role: str, name: str, rule: str,
              sentinels: tuple[Path, ...] = ()) -> Attack:
    """www's binding names a file of its own (`deployTo[0].files.<role>`)."""
    files = {"certs/www.yaml": certificate_yaml(
        "www", binding=f"      files: {{{role}: {name}}}\n")}
    return Attack(files, position(files, "certs/www.yaml", name), rule, sentinels)


def default_names(directory: Path) -> tuple[Path, ...]:
    """The files the files connector would write for www in `directory`."""
    return tuple(directory / f"www{ext}" for ext in
                 (".crt", ".key", ".chain.pem", ".fullchain.pem"))


# --------------------------------------------------------------------------- commands


@attack
def reload_command_sh_c(lab: Lab) -> Attack:
    files = web_running(lab, f"    reloadCommand: [sh, -c, 'touch {lab.sentinel('sh')}']\n")
    return Attack(files, position(files, "targets/web.yaml", "[sh, -c"),
                  ["reloadCommand", COMMAND], [lab.sentinel("sh")])


@attack
def validate_command_usr_bin_env(lab: Lab) -> Attack:
    files = web_running(lab, f"    validateCommand: [/usr/bin/env, touch, {lab.sentinel('env')}]\n")
    return Attack(files, position(files, "targets/web.yaml", "[/usr/bin/env"),
                  ["validateCommand", COMMAND], [lab.sentinel("env")])


def _evil_script(lab: Lab, name: str) -> str:
    return f"#!/bin/sh\ntouch {lab.sentinel(name)}\n"


def _executable(path: Path) -> Callable[[], None]:
    return lambda: path.chmod(0o755)


@attack
def reload_command_script_in_the_checkout(lab: Lab) -> Attack:
    script = lab.repo_path / "hooks" / "evil.sh"
    files = {
        "hooks/evil.sh": _evil_script(lab, "checkout"),
        **web_running(lab, f"    reloadCommand: [{script}]\n"),
    }
    return Attack(files, position(files, "targets/web.yaml", f"[{script}]"),
                  ["reloadCommand", COMMAND], [lab.sentinel("checkout")],
                  after_commit=_executable(script))


@attack
def reload_command_relative_script(lab: Lab) -> Attack:
    """`./hooks/evil.sh`, resolved against the working directory: here, the checkout."""
    script = lab.repo_path / "hooks" / "evil.sh"
    files = {
        "hooks/evil.sh": _evil_script(lab, "relative"),
        **web_running(lab, "    reloadCommand: [./hooks/evil.sh]\n"),
    }
    return Attack(files, position(files, "targets/web.yaml", "[./hooks/evil.sh]"),
                  ["reloadCommand", COMMAND], [lab.sentinel("relative")],
                  after_commit=_executable(script))


@attack
def validate_command_dotdot_out_of_the_hook_directory(lab: Lab) -> Attack:
    """The strict policy allows any program under its hook directory; `..` leaves it."""
    script = lab.repo_path / "hooks" / "evil.sh"
    escape = f"{lab.hooks}/../desired/hooks/evil.sh"
    files = {
        "hooks/evil.sh": _evil_script(lab, "dotdot"),
        **web_running(lab, f"    validateCommand: [{escape}]\n"),
    }
    return Attack(files, position(files, "targets/web.yaml", f"[{escape}]"),
                  ["validateCommand", COMMAND], [lab.sentinel("dotdot")],
                  after_commit=_executable(script))


@attack
def nginx_test_with_the_attackers_config(lab: Lab) -> Attack:
    """The built-in `nginx -t` with `-c` pointing at a config from Git (load_module ...)."""
    conf = lab.repo_path / "evil.conf"
    so = lab.repo_path / "evil.so"
    files = {
        **RENEW,
        "evil.conf": f"load_module {so};\nevents {{}}\n",
        "targets/web.yaml": target_yaml(
            "web", lab.web_directory, type_="nginx",
            settings=f"    validateCommand: [nginx, -t, -c, {conf}]\n"),
    }
    if lab.kind == "strict":  # nginx is not among the strict policy's targetTypes
        return Attack(files, position(files, "targets/web.yaml", "nginx"),
                      "target type 'nginx' is not allowed by the site policy")
    return Attack(files, position(files, "targets/web.yaml", "[nginx, -t, -c"),
                  ["validateCommand", COMMAND])


@attack
def fake_nginx_through_a_relative_path_entry(lab: Lab) -> Attack:
    """The operator's PATH has a relative entry (`bin`) and certgit runs in the checkout:
    a committed `bin/nginx` would win over /usr/sbin/nginx."""
    fake = lab.repo_path / "bin" / "nginx"
    files = {
        **RENEW,
        "bin/nginx": _evil_script(lab, "fake-nginx"),
        "targets/web.yaml": target_yaml(
            "web", lab.web_directory, type_="nginx",
            settings="    validateCommand: [nginx, -t]\n"),
    }
    os.environ["PATH"] = "bin" + os.pathsep + os.environ["PATH"]  # undone by the test
    if lab.kind == "strict":
        return Attack(files, position(files, "targets/web.yaml", "nginx"),
                      "target type 'nginx' is not allowed by the site policy",
                      [lab.sentinel("fake-nginx")], after_commit=_executable(fake))
    return Attack(files, position(files, "targets/web.yaml", "[nginx, -t]"),
                  ["validateCommand", COMMAND], [lab.sentinel("fake-nginx")],
                  after_commit=_executable(fake))


@attack
def arguments_appended_to_an_exact_argv(lab: Lab) -> Attack:
    """The strict policy allows exactly `/usr/bin/true`, not `/usr/bin/true` plus more."""
    strict_only(lab, "the defaults allow no command for a files target at all")
    files = web_running(lab, f"    reloadCommand: [/usr/bin/true, {lab.sentinel('args')}]\n")
    return Attack(files, position(files, "targets/web.yaml", "[/usr/bin/true"),
                  ["reloadCommand", COMMAND])


# --------------------------------------------------------------------------- directories


@attack
def directory_etc(lab: Lab) -> Attack:
    return with_directory(lab, "/etc", sentinels=default_names(Path("/etc")))


@attack
def directory_root_ssh(lab: Lab) -> Attack:
    return with_directory(lab, "/root/.ssh", rule=NEVER,
                          sentinels=default_names(Path("/root/.ssh")))


@attack
def directory_home_ssh(lab: Lab) -> Attack:
    home = Path.home() / ".ssh"
    if str(home) == "/root/.ssh":
        pytest.skip("HOME is /root: ~/.ssh is the directory_root_ssh attack")
    return with_directory(lab, str(home), rule=NEVER, sentinels=default_names(home))


@attack
def directory_literal_tilde_ssh(lab: Lab) -> Attack:
    """`~/.ssh` is not expanded: relative, so under the state directory."""
    return with_directory(lab, "~/.ssh", rule=NEVER)


@attack
def directory_ssh_under_an_allowed_root(lab: Lab) -> Attack:
    """A `.ssh` directory inside the allowed root: the deny list beats the allow list."""
    keys = lab.root / "alice" / ".ssh"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "authorized_keys").write_text("ssh-ed25519 AAAA operator\n")
    lab.baseline = lab.snapshot()
    files = {
        **web_with(lab, directory=str(keys)),
        "certs/www.yaml": certificate_yaml(
            "www", binding="      files: {key: authorized_keys}\n"),
    }
    return Attack(files, position(files, "targets/web.yaml", str(keys)), [NEVER, ".ssh"])


@attack
def directory_etc_sudoers_d(lab: Lab) -> Attack:
    return with_directory(lab, "/etc/sudoers.d", rule=[NEVER, "sudoers"],
                          sentinels=default_names(Path("/etc/sudoers.d")))


@attack
def directory_state_dir_master_key(lab: Lab) -> Attack:
    """`directory: .` is the state directory; `master.key` its master key."""
    files = {
        **web_with(lab, "    files: {certificate: master.key}\n", directory="."),
    }
    return Attack(files, _value_of(files, "targets/web.yaml", "directory: "), STATE)


def _value_of(files: dict[str, str], path: str, key: str) -> str:
    """FILE:LINE:COL of the value after `key` (e.g. "directory: ")."""
    at = position(files, path, key)
    name, line, column = at.rsplit(":", 2)
    return f"{name}:{line}:{int(column) + len(key)}"


@attack
def directory_state_dir_absolute_ca(lab: Lab) -> Attack:
    """The state directory's CA, by absolute path: replace the CA key."""
    ca = lab.state / "ca" / "ca"
    files = web_with(lab, "    files: {certificate: ca.crt, key: ca.key}\n", directory=str(ca))
    return Attack(files, position(files, "targets/web.yaml", str(ca)), STATE)


@attack
def directory_state_work(lab: Lab) -> Attack:
    """The state directory's work/ (journals and backups of the executor)."""
    files = web_with(lab, directory=str(lab.state / "work" / "web"))
    return Attack(files, position(files, "targets/web.yaml", str(lab.state / "work")), STATE)


@attack
def directory_dotdot_escape(lab: Lab) -> Attack:
    """`targets/../../outside` (relative, from the state dir) or `<root>/web/../../outside`."""
    directory = ("targets/../../outside" if lab.kind == "defaults"
                 else f"{lab.root}/web/../../outside")
    return with_directory(lab, directory, sentinels=default_names(lab.outside))


@attack
def directory_symlink_out_of_the_root(lab: Lab) -> Attack:
    """A symlink under the allowed root that points outside it (made on disk beforehand)."""
    link = lab.root / "escape"
    if not link.is_symlink():
        link.symlink_to(lab.outside)
        lab.baseline = lab.snapshot()
    directory = "targets/escape" if lab.kind == "defaults" else str(link)
    return with_directory(lab, directory, rule=[OUTSIDE, "resolves to"],
                          sentinels=default_names(lab.outside))


@attack
def file_symlink_out_of_the_root(lab: Lab) -> Attack:
    """A real directory under the root whose `www.crt` is a symlink to a file outside it."""
    web2 = lab.root / "web2"
    if not web2.exists():
        web2.mkdir()
        (web2 / "www.crt").symlink_to(lab.outside / "victim.pem")
        lab.baseline = lab.snapshot()
    directory = "targets/web2" if lab.kind == "defaults" else str(web2)
    files = web_with(lab, directory=directory)
    # The directory is allowed: the problem is www's binding, in the unchanged certs/www.yaml.
    at = _value_of(lab.base_files(), "certs/www.yaml", "- target: ")
    return Attack(files, at, [OUTSIDE, "resolves to"])


@attack
def file_name_dotdot(lab: Lab) -> Attack:
    """deployTo[].files with `/` and `..`: www's certificate onto the bait file outside."""
    name = os.path.relpath(lab.outside / "victim.pem", lab.web)
    return www_files(lab, "certificate", name, OUTSIDE)


@attack
def file_name_absolute(lab: Lab) -> Attack:
    """An absolute file name drops the target directory: /etc/cron.d/..."""
    path = Path("/etc/cron.d/certgit-attack")
    return www_files(lab, "key", str(path), OUTSIDE, sentinels=(path,))


@attack
def file_name_into_the_state_dir(lab: Lab) -> Attack:
    name = os.path.relpath(lab.state / "master.key", lab.web)
    return www_files(lab, "key", name, STATE)


@attack
def binding_directory_override(lab: Lab) -> Attack:
    """deployTo[].directory is not a field: the schema refuses it (no escape through it)."""
    files = {"certs/www.yaml": certificate_yaml(
        "www", binding="      directory: ../../../etc\n")}
    return Attack(files, position(files, "certs/www.yaml", "directory"), "directory",
                  default_names(Path("/etc")))


@attack
def the_site_policy_file_itself(lab: Lab) -> Attack:
    """The strict policy's directory is an allowed root; the policy file is still protected."""
    strict_only(lab, "the defaults have no policy file to overwrite")
    assert lab.policy is not None
    files = web_with(lab, f"    files: {{certificate: {lab.policy.name}}}\n",
                     directory=str(lab.policy.parent))
    # The directory is allowed; www's binding would write the policy file.
    at = _value_of(lab.base_files(), "certs/www.yaml", "- target: ")
    return Attack(files, at, [f"{lab.policy} is never writable"])


@attack
def setuid_world_writable_certificate_files(lab: Lab) -> Attack:
    files = {**RENEW, **web_with(lab, '    mode: "6777"\n')}
    return Attack(files, position(files, "targets/web.yaml", '"6777"'),
                  "setuid, setgid and sticky bits are never set")


@attack
def key_handed_to_another_user(lab: Lab) -> Attack:
    files = {**RENEW, **web_with(lab, "    owner: nobody\n    group: nogroup\n")}
    return Attack(files, position(files, "targets/web.yaml", "nobody"),
                  "owner 'nobody' is not allowed by the site policy")


@attack
def world_readable_private_key(lab: Lab) -> Attack:
    files = {**RENEW, **web_with(lab, '    keyMode: "0644"\n')}
    return Attack(files, position(files, "targets/web.yaml", '"0644"'),
                  "a private key is never readable by others")


# --------------------------------------------------------------------------- endpoints


def with_verify(lab: Lab, endpoint: str) -> Attack:
    files = web_with(lab)
    files["targets/web.yaml"] = files["targets/web.yaml"].replace(
        "  settings:\n", f"  verify: {{endpoint: '{endpoint}'}}\n  settings:\n")
    return Attack(files, position(files, "targets/web.yaml", f"'{endpoint}'"),
                  [f"endpoint {endpoint}", ENDPOINT])


@attack
def verify_private_ssh_port(lab: Lab) -> Attack:
    return with_verify(lab, "10.0.0.1:22")


@attack
def verify_public_host(lab: Lab) -> Attack:
    return with_verify(lab, "example.com:443")


@attack
def verify_ipv4_mapped_loopback(lab: Lab) -> Attack:
    return with_verify(lab, "[::ffff:127.0.0.1]:22")


@attack
def verify_shorthand_loopback(lab: Lab) -> Attack:
    """`127.1` dials 127.0.0.1 through inet_aton, but names no loopback host exactly."""
    return with_verify(lab, "127.1:22")


@attack
def verify_other_loopback_port(lab: Lab) -> Attack:
    strict_only(lab, "the defaults allow any loopback port")
    return with_verify(lab, "127.0.0.1:22")


def caddy_admin(lab: Lab, endpoint: str) -> dict[str, str]:
    return {"targets/caddy.yaml": target_yaml(
        "edge", "", type_="caddy",
        settings=f"    method: admin-api\n    adminEndpoint: '{endpoint}'\n")}


@attack
def caddy_admin_endpoint_off_loopback(lab: Lab) -> Attack:
    files = caddy_admin(lab, "10.0.0.1:2019")
    return Attack(files, position(files, "targets/caddy.yaml", "'10.0.0.1:2019'"),
                  "loopback host:port")


@attack
def caddy_admin_endpoint_loopback_not_allowed(lab: Lab) -> Attack:
    strict_only(lab, "the defaults allow loopback admin endpoints")
    files = caddy_admin(lab, "127.0.0.1:2019")
    return Attack(files, position(files, "targets/caddy.yaml", "'127.0.0.1:2019'"),
                  ["endpoint 127.0.0.1:2019", ENDPOINT])


# --------------------------------------------------------------------------- secrets


def issuer_with(ref: str) -> dict[str, str]:
    return {"issuer.yaml": ISSUER.replace(
        "localCA: {commonName: attack suite CA}",
        f"localCA:\n    commonName: attack suite CA\n    certificateRef: {ref}\n"
        f"    keyRef: {ref}")}


def secret(lab: Lab, ref: str, rule: str | list[str]) -> Attack:
    files = issuer_with(ref)
    return Attack(files, _value_of(files, "issuer.yaml", "certificateRef: "), rule)


@attack
def secret_file_etc_shadow(lab: Lab) -> Attack:
    return secret(lab, "{file: /etc/shadow}", SECRET_NEVER)


@attack
def secret_file_symlink_to_etc_shadow(lab: Lab) -> Attack:
    link = lab.secrets / "ca.pem"
    if not link.is_symlink():
        link.symlink_to("/etc/shadow")
    return secret(lab, f"{{file: {link}}}", SECRET_NEVER)


@attack
def secret_file_master_key(lab: Lab) -> Attack:
    return secret(lab, f"{{file: {lab.state / 'master.key'}}}", SECRET_NEVER)


@attack
def secret_env_master_key(lab: Lab) -> Attack:
    return secret(lab, "{env: CERTGIT_MASTER_KEY}", ["secretRef env CERTGIT_MASTER_KEY",
                                                       "is not allowed"])


@attack
def secret_env_not_allowed(lab: Lab) -> Attack:
    return secret(lab, "{env: AWS_SECRET_ACCESS_KEY}",
                  ["secretRef env AWS_SECRET_ACCESS_KEY", "is not allowed"])


# --------------------------------------------------------------------------- limits


@attack
def twenty_thousand_sans(lab: Lab) -> Attack:
    names = [f"h{i}.example.test" for i in range(20_000)]
    files = {"certs/www.yaml": certificate_yaml("www", dns=names)}
    return Attack(files, position(files, "certs/www.yaml", "[h0."),
                  ["20000 SANs", "limits.maxSansPerCertificate"])


@attack
def thousand_year_duration(lab: Lab) -> Attack:
    files = {"certs/www.yaml": certificate_yaml("www", spec="  duration: 365000d\n")}
    return Attack(files, position(files, "certs/www.yaml", "365000d"), "at most 100 years")


@attack
def duration_over_the_site_maximum(lab: Lab) -> Attack:
    strict_only(lab, "the defaults allow up to 3650d, the schema's 100 years above that")
    files = {"certs/www.yaml": certificate_yaml("www", spec="  duration: 91d\n")}
    return Attack(files, position(files, "certs/www.yaml", "91d"), "limits.maxDuration")


@attack
def forbidden_key_type(lab: Lab) -> Attack:
    strict_only(lab, "the defaults allow every key type")
    files = {"certs/www.yaml": certificate_yaml(
        "www", spec="  key: {algorithm: RSA, size: 2048}\n")}
    return Attack(files, position(files, "certs/www.yaml", "{algorithm: RSA"),
                  ["key type RSA-2048", "limits.keyTypes"])


@attack
def target_type_not_allowed(lab: Lab) -> Attack:
    strict_only(lab, "the defaults allow every installed connector")
    files = {"targets/web.yaml": target_yaml("web", lab.web_directory, type_="haproxy")}
    return Attack(files, position(files, "targets/web.yaml", "haproxy"),
                  "target type 'haproxy' is not allowed by the site policy")


@attack
def more_certificates_than_allowed(lab: Lab) -> Attack:
    strict_only(lab, "the defaults allow 50,000 Certificates")
    # Loaded in path order after certs/www.yaml: the fourth Certificate is zz2.
    files = {f"certs/zz{i}.yaml": certificate_yaml(f"zz{i}") for i in range(3)}
    return Attack(files, _value_of(files, "certs/zz2.yaml", "name: "),
                  ["more than 3 Certificates", "limits.maxCertificates"])


# --------------------------------------------------------------------------- the runs


def test_certgit_toml_pushed_to_the_checkout_is_not_a_site_policy(tmp_path: Path) -> None:
    """A `[site]` in a certgit.toml found in the working directory (here a checkout of the
    desired-state repository) is refused, not obeyed: every command exits 1, nothing moves."""
    lab = make_lab(tmp_path, "defaults")  # no --site-policy: the built-in defaults apply
    lab.cwd = lab.repo_path  # the operator runs certgit in a checkout of the repository
    files = {
        "certgit.toml": f'[site.paths]\nallow = ["{lab.outside}"]\n',
        **web_with(lab, directory=str(lab.outside)),
    }
    before = lab.snapshot()
    lab.commit(files, "attack: a site policy in the repository")
    try:
        for args in (("validate",), ("plan",), ("apply", "--as", "attacker"), ("status",)):
            r = lab.run(*args)
            assert r.code == EXIT_ERROR, r.text
            assert "has a [site] table but was found in the working directory" in r.err, r.err
        assert lab.snapshot() == before
        assert lab.source_state("last_applied_commit") == lab.good
    finally:
        lab.restore_checkout(files)


@pytest.fixture
def path_env():
    """Restore PATH (one attack puts a relative entry in front)."""
    saved = os.environ["PATH"]
    yield
    os.environ["PATH"] = saved


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_refused(lab: Lab, name: str, path_env) -> None:
    lab.refused(ATTACKS[name](lab))
