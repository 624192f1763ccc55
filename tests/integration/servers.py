"""Real TLS servers for integration tests, started on 127.0.0.1 with configs in tmp_path.

Every helper returns an object with `.port`, `.stop()` and, where the server
logs it, `.reload_count()`. Servers run as the current user (root in CI) and
never bind anything but loopback on a free ephemeral port. Every wait is
bounded in count and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from certgit.connectors.model import Deployment

APACHE_MODULES = Path("/usr/lib/apache2/modules")


# -- small utilities ------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (ephemeral range, chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.05
) -> bool:
    """Poll `predicate` until true; bounded by `timeout` seconds and a fixed attempt count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        try:
            if predicate():
                return True
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return False


def served_fingerprint(
    port: int, server_name: str | None, *, host: str = "127.0.0.1", timeout: float = 5.0
) -> str:
    """SHA-256 hex of the leaf served on host:port for SNI `server_name` (no chain checks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der, "handshake completed without a certificate"
    return hashlib.sha256(der).hexdigest()


def wait_served(
    port: int, server_name: str | None, fingerprint: str, *, timeout: float = 10.0
) -> bool:
    """True once the endpoint serves `fingerprint` (servers reload asynchronously)."""
    return wait_for(lambda: served_fingerprint(port, server_name) == fingerprint, timeout=timeout)


def counting_command(directory: Path, label: str, argv: Sequence[str]) -> tuple[list[str], Path]:
    """Wrap `argv` in a shell script that appends a line to a counter file, then runs it.

    Returns (argv of the wrapper, counter file). The wrapper's exit status is the
    wrapped command's, so a failing command still fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    counter = directory / f"{label}.count"
    counter.touch()
    script = directory / f"{label}.sh"
    quoted = " ".join(_sh_quote(a) for a in argv)
    script.write_text(f'#!/bin/sh\necho run >> {_sh_quote(str(counter))}\nexec {quoted}\n')
    script.chmod(0o755)
    return [str(script)], counter


def count_lines(path: Path) -> int:
    """Number of lines in a counter file (0 when absent)."""
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def require_binary(name: str) -> str:
    """The binary's path, or pytest.skip printing why (CI installs scripts/system-deps.sh)."""
    import pytest

    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(f"{name} is not installed (run scripts/system-deps.sh as root to install it)")
    raise AssertionError("unreachable")


# -- certificates ---------------------------------------------------------------------------


def write_pair(deployment: Deployment, cert_path: Path, key_path: Path) -> None:
    """Write a fullchain + key directly (to bootstrap a server before the first deploy)."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(deployment.fullchain_pem)
    key_path.write_bytes(deployment.key_pem)
    key_path.chmod(0o600)


def write_apache_layout(directory: Path, deployment: Deployment) -> None:
    """Seed the apache connector's layout: certs/NAME.crt, certs/NAME.chain.pem,
    private/NAME.key (0600), as a server's existing files before certgit's first deploy."""
    name = deployment.certificate
    (directory / "certs").mkdir(parents=True, exist_ok=True)
    (directory / "private").mkdir(parents=True, exist_ok=True)
    (directory / "certs" / f"{name}.crt").write_bytes(deployment.cert_pem)
    (directory / "certs" / f"{name}.chain.pem").write_bytes(deployment.chain_pem)
    key = directory / "private" / f"{name}.key"
    key.write_bytes(deployment.key_pem)
    key.chmod(0o600)


@dataclass(frozen=True)
class Site:
    """One TLS virtual host: SNI name and the files the server reads."""

    server_name: str
    cert: Path  # fullchain (or leaf, for apache with `chain` set)
    key: Path
    chain: Path | None = None


# -- process plumbing -----------------------------------------------------------------------


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr or proc.stdout}")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemonised server's parent is gone, so it stays a zombie until init reaps it
    # (seconds in some containers): a zombie has exited and holds no port.
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _terminate_pid(pid: int | None, sig: int = signal.SIGTERM) -> None:
    if pid is None or not _alive(pid):
        return
    os.kill(pid, sig)
    if not wait_for(lambda: not _alive(pid), timeout=10):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), timeout=5)


def _log_count(path: Path, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle)
    except FileNotFoundError:
        return 0


# -- nginx ----------------------------------------------------------------------------------


@dataclass
class NginxServer:
    """`nginx -p prefix -c conf` daemonised; the master's pid is in prefix/nginx.pid."""

    prefix: Path
    port: int
    sites: tuple[Site, ...]
    binary: str = "/usr/sbin/nginx"
    # When set, one server block loads {dir}/<first SNI label>.crt/.key per handshake.
    dynamic_dir: Path | None = None

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def write_config(self, extra: str = "") -> None:
        """(Re)write nginx.conf; `extra` goes into the http block (tests break it with this)."""
        servers = "\n".join(
            f"""    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name {site.server_name};
        ssl_certificate {site.cert};
        ssl_certificate_key {site.key};
        return 200 "ok\\n";
    }}"""
            for site in self.sites
        )
        if self.dynamic_dir is not None:
            servers += f"""
    map $ssl_server_name $certgit_name {{
        "~^(?<label>[^.]+)\\." $label;
        default default;
    }}
    server {{
        listen 127.0.0.1:{self.port} ssl default_server;
        ssl_certificate {self.dynamic_dir}/$certgit_name.crt;
        ssl_certificate_key {self.dynamic_dir}/$certgit_name.key;
        return 200 "ok\\n";
    }}"""
        user = "user root root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"""{user}worker_processes 1;
pid {self.pid_file};
error_log {self.error_log} notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {self.prefix}/tmp/body;
    proxy_temp_path {self.prefix}/tmp/proxy;
    fastcgi_temp_path {self.prefix}/tmp/fastcgi;
    uwsgi_temp_path {self.prefix}/tmp/uwsgi;
    scgi_temp_path {self.prefix}/tmp/scgi;
{extra}
{servers}
}}
"""
        )

    def base_argv(self) -> list[str]:
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(self.conf)]

    def validate_argv(self) -> list[str]:
        return [*self.base_argv(), "-t", "-q"]

    def reload_argv(self) -> list[str]:
        # FACTS.md: signalling the master directly is twice as fast as `nginx -s reload`.
        pid = self.pid()
        assert pid is not None, "nginx is not running"
        return ["/usr/bin/kill", "-HUP", str(pid)]

    def start(self) -> NginxServer:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        (self.prefix / "logs").mkdir(exist_ok=True)  # nginx opens prefix/logs/error.log early
        self.write_config()
        _run(self.base_argv())
        if not wait_for(lambda: self.pid() is not None and _port_open(self.port)):
            raise RuntimeError(f"nginx did not start: {self.error_log.read_text()[-2000:]}")
        return self

    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    def reload_count(self) -> int:
        """SIGHUPs the master accepted (nginx logs one line per reconfiguration)."""
        return _log_count(self.error_log, "(SIGHUP) received")

    def stop(self) -> None:
        _terminate_pid(self.pid(), signal.SIGQUIT)


def start_nginx(root: Path, sites: Sequence[Site]) -> NginxServer:
    """Start nginx serving `sites` on a free loopback port (their files must exist)."""
    return NginxServer(prefix=root, port=free_port(), sites=tuple(sites)).start()


# -- apache2 --------------------------------------------------------------------------------


@dataclass
class ApacheServer:
    """`apache2 -f conf -k start` with its own ServerRoot, PidFile, Mutex and runtime dir."""

    root: Path
    port: int
    sites: tuple[Site, ...]
    binary: str = "/usr/sbin/apache2"

    @property
    def conf(self) -> Path:
        return self.root / "httpd.conf"

    @property
    def pid_file(self) -> Path:
        return self.root / "httpd.pid"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def write_config(self, extra: str = "") -> None:
        vhosts = "\n".join(
            f"""<VirtualHost 127.0.0.1:{self.port}>
    ServerName {site.server_name}
    SSLEngine on
    SSLCertificateFile {site.cert}
    SSLCertificateKeyFile {site.key}
{f"    SSLCertificateChainFile {site.chain}" if site.chain else ""}
</VirtualHost>"""
            for site in self.sites
        )
        user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
        mods = "\n".join(
            f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so"
            for name in ("mpm_event", "authz_core", "socache_shmcb", "ssl")
        )
        self.conf.write_text(
            f"""ServerRoot "{self.root}"
ServerName localhost
PidFile {self.pid_file}
Mutex file:{self.root}/mutex default
DefaultRuntimeDir {self.root}/run
{mods}
{user}Listen 127.0.0.1:{self.port}
ErrorLog {self.error_log}
LogLevel notice
SSLSessionCache shmcb:{self.root}/run/ssl_scache(512000)
{extra}
{vhosts}
"""
        )

    def validate_argv(self) -> list[str]:
        return [self.binary, "-f", str(self.conf), "-t"]

    def reload_argv(self) -> list[str]:
        return [self.binary, "-f", str(self.conf), "-k", "graceful"]

    def start(self) -> ApacheServer:
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        (self.root / "mutex").mkdir(exist_ok=True)
        self.write_config()
        _run([self.binary, "-f", str(self.conf), "-k", "start"])
        if not wait_for(lambda: self.pid() is not None and _port_open(self.port)):
            raise RuntimeError(f"apache2 did not start: {self.error_log.read_text()[-2000:]}")
        return self

    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    def reload_count(self) -> int:
        """Graceful restarts the parent accepted (logged as AH00493 at notice level)."""
        return _log_count(self.error_log, "Doing graceful restart")

    def stop(self) -> None:
        _terminate_pid(self.pid())


def apache_site(directory: Path, server_name: str, name: str) -> Site:
    """The vhost serving the apache connector's files for certificate `name`."""
    return Site(
        server_name,
        directory / "certs" / f"{name}.crt",
        directory / "private" / f"{name}.key",
        chain=directory / "certs" / f"{name}.chain.pem",
    )


def start_apache(root: Path, sites: Sequence[Site]) -> ApacheServer:
    """Start apache2 serving `sites` on a free loopback port (their files must exist)."""
    return ApacheServer(root=root, port=free_port(), sites=tuple(sites)).start()


# -- haproxy --------------------------------------------------------------------------------


@dataclass
class HAProxyServer:
    """`haproxy -W -f cfg -D -p pidfile`: master-worker, so SIGUSR2 to the master reloads."""

    root: Path
    port: int
    crt: Path  # a combined PEM file, or a directory of them
    binary: str = "/usr/sbin/haproxy"

    @property
    def cfg(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def pid_file(self) -> Path:
        return self.root / "haproxy.pid"

    def write_config(self, extra: str = "") -> None:
        self.cfg.write_text(
            f"""global
    pidfile {self.pid_file}
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
{extra}
frontend fe
    bind 127.0.0.1:{self.port} ssl crt {self.crt}
    http-request return status 200 content-type text/plain string ok
"""
        )

    def validate_argv(self) -> list[str]:
        return [self.binary, "-c", "-q", "-f", str(self.cfg)]

    def reload_argv(self) -> list[str]:
        """SIGUSR2 to the master, then wait (bounded) for the new worker.

        The master re-executes itself asynchronously; a second SIGUSR2 during
        that window is lost, so a rollback reload right after a reload would be
        a no-op without this wait.
        """
        script = self.root / "reload.sh"
        script.write_text(
            f"""#!/bin/sh
master=$(cat {self.pid_file}) || exit 1
old=$(pgrep -n -P "$master")
kill -USR2 "$master" || exit 1
i=0
while [ $i -lt 200 ]; do
  new=$(pgrep -n -P "$master")
  if [ -n "$new" ] && [ "$new" != "$old" ]; then exit 0; fi
  sleep 0.05
  i=$((i + 1))
done
echo "haproxy did not start a new worker" >&2
exit 1
"""
        )
        script.chmod(0o755)
        return [str(script)]

    def start(self) -> HAProxyServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        _run([self.binary, "-W", "-D", "-f", str(self.cfg), "-p", str(self.pid_file)])
        if not wait_for(lambda: self.pid() is not None and _port_open(self.port)):
            raise RuntimeError("haproxy did not start")
        return self

    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    def stop(self) -> None:
        _terminate_pid(self.pid())


def start_haproxy(root: Path, crt: Path) -> HAProxyServer:
    """Start haproxy terminating TLS with `crt` on a free loopback port."""
    return HAProxyServer(root=root, port=free_port(), crt=crt).start()


# -- caddy ----------------------------------------------------------------------------------


@dataclass
class CaddyServer:
    """`caddy run --config caddy.json`, admin API on 127.0.0.1:<admin_port>.

    With `sites`, the TLS app loads those cert/key files (`load_files`); with
    none, certificates arrive through the admin API (`load_pem`).
    """

    root: Path
    port: int
    admin_port: int
    sites: tuple[Site, ...] = ()
    binary: str = "/usr/bin/caddy"
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "caddy.json"

    @property
    def log(self) -> Path:
        return self.root / "caddy.log"

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def config(self) -> dict[str, object]:
        certificates: dict[str, object] = {}
        if self.sites:
            certificates["load_files"] = [
                {"certificate": str(s.cert), "key": str(s.key)} for s in self.sites
            ]
        return {
            "admin": {"listen": self.admin},
            "storage": {"module": "file_system", "root": str(self.root / "data")},
            "apps": {
                "http": {
                    "servers": {
                        "test": {
                            "listen": [f"127.0.0.1:{self.port}"],
                            "routes": [
                                {"handle": [{"handler": "static_response", "body": "ok"}]}
                            ],
                            "tls_connection_policies": [{}],
                            "automatic_https": {"disable": True},
                        }
                    }
                },
                "tls": {"certificates": certificates},
            },
        }

    def env(self) -> dict[str, str]:
        # Caddy keeps state under $HOME/$XDG_*: point them into tmp_path.
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "XDG_DATA_HOME": str(self.root / "data"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
        }

    def validate_argv(self) -> list[str]:
        return [self.binary, "validate", "--config", str(self.config_path)]

    def reload_argv(self) -> list[str]:
        # --force: the JSON is unchanged when only the certificate files changed.
        return [
            self.binary, "reload", "--force", "--config", str(self.config_path),
            "--address", self.admin,
        ]

    def start(self) -> CaddyServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                start_new_session=True,
            )
        if not wait_for(lambda: _port_open(self.admin_port) and _port_open(self.port)):
            self.stop()
            raise RuntimeError(f"caddy did not start: {self.log.read_text()[-2000:]}")
        return self

    def reload_count(self) -> int:
        """Config loads after the first (caddy logs every applied /load)."""
        return max(_log_count(self.log, '"msg":"load complete"') - 1, 0)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


def start_caddy(root: Path, sites: Sequence[Site] = ()) -> CaddyServer:
    """Start caddy on free loopback ports; `sites` files must exist when given."""
    return CaddyServer(
        root=root, port=free_port(), admin_port=free_port(), sites=tuple(sites)
    ).start()
