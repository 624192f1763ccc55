#!/usr/bin/env python3
"""Plan at scale: N certificates x 3 targets, cold vs no-op vs small change, beside the floor.

Generates a repository of N Certificate files (one per file) bound to 3 of 30
`files` targets, commits it with pygit2, and measures through the same Engine
the CLI uses:

- cold:   fresh state dir: clone the bare mirror, parse + validate every file, plan
- no-op:  poll again with the commit unchanged (fetch, tree id compare, plan)
- change: commit 10 changed files, poll, re-parse only those blobs, plan
- restart: a new engine on the same state dir (documents from the blob-id cache)
- floor:  read the same files from disk and parse them with PyYAML's C loader
- observe: with every binding recorded as deployed (2 files each on disk), a plan
  that observes every target live (the default of plan/status/apply) beside the
  same plan with --refresh=false

and prints the figures, the ratios against the goals of issue 2 (cold <= 2x floor,
no-op <= 5% of cold, 10-file change <= 10% of cold) and the peak RSS (goal <= 300 MB).

    .venv/bin/python benchmarks/plan_scale.py [--certs 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pygit2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers (issue())

from certgit.reconciler.config import Settings
from certgit.reconciler.engine import Engine

SIG = pygit2.Signature("certgit-bench", "bench@example.invalid", 1_700_000_000, 0)
TARGETS = 30
CERT_ROOT = "/srv/certs"  # replaced by a temp dir in main()

HEADER = """apiVersion: certgit.dev/v1
kind: Issuer
metadata:
  name: bench-ca
spec:
  type: local-ca
---
apiVersion: certgit.dev/v1
kind: Policy
metadata:
  name: prod
spec:
  approvals:
    - name: prod-deploys
      match:
        targetLabels: {env: production}
        actions: [deploy]
"""


def target_doc(i: int) -> str:
    env = "production" if i % 3 == 0 else "staging"
    return f"""apiVersion: certgit.dev/v1
kind: Target
metadata:
  name: web-{i:02d}
  labels:
    env: {env}
spec:
  type: files
  transport:
    type: local
  settings:
    directory: {CERT_ROOT}/web-{i:02d}
    files: {{chain: null, fullchain: null}}
"""


def cert_doc(i: int, extra_san: bool = False) -> str:
    t = [f"web-{(i + k * 7) % TARGETS:02d}" for k in range(3)]
    extra = f"\n    - extra-{i}.example.com" if extra_san else ""
    return f"""apiVersion: certgit.dev/v1
kind: Certificate
metadata:
  name: cert-{i:05d}
  labels:
    team: team-{i % 17}
spec:
  commonName: svc-{i}.example.com
  dnsNames:
    - svc-{i}.example.com
    - alt-{i}.example.com{extra}
  key:
    algorithm: ECDSA
    size: 256
  issuerRef:
    name: bench-ca
  duration: 90d
  renewBefore: 30d
  deployTo:
    - target: {t[0]}
    - target: {t[1]}
    - target: {t[2]}
"""


def build_repo(root: Path, n: int) -> tuple[pygit2.Repository, dict[str, str]]:
    """Write the files to a work tree (for the floor) and commit them without checkout."""
    files = {"issuers.yaml": HEADER}
    files.update({f"targets/web-{i:02d}.yaml": target_doc(i) for i in range(TARGETS)})
    files.update({f"certificates/cert-{i:05d}.yaml": cert_doc(i) for i in range(n)})
    for rel, text in files.items():
        p = root / "work" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    repo = pygit2.init_repository(str(root / "origin.git"), bare=True, initial_head="main")
    commit_tree(repo, files, parents=[])
    return repo, files


def commit_tree(repo: pygit2.Repository, files: dict[str, str], parents: list) -> str:
    dirs: dict[str, dict[str, str]] = {}
    for rel, text in files.items():
        d, _, name = rel.rpartition("/")
        dirs.setdefault(d, {})[name] = text
    root_tb = repo.TreeBuilder()
    for d, entries in sorted(dirs.items()):
        tb = repo.TreeBuilder() if d else root_tb
        for name, text in entries.items():
            tb.insert(name, repo.create_blob(text.encode()), pygit2.GIT_FILEMODE_BLOB)
        if d:
            root_tb.insert(d, tb.write(), pygit2.GIT_FILEMODE_TREE)
    tree = root_tb.write()
    oid = repo.create_commit("refs/heads/main", SIG, SIG, "bench", tree, parents)
    return str(oid)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def floor_parse(work: Path) -> int:
    docs = 0
    for path in sorted(work.rglob("*.yaml")):
        for doc in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader):
            docs += doc is not None
    return docs


def seed_deployed(engine: Engine, root: Path) -> int:
    """Record every binding as deployed (v1) and write its two files, as an apply would.

    Rows are written straight into the store (this measures planning, not
    issuance): one real certificate PEM stands in for every version's files.
    """
    import hashlib
    import json
    from datetime import UTC, datetime, timedelta

    from certgit.reconciler.model import binding_config_json
    from certgit.reconciler.store.sqlite import db_timestamp
    from tests.integration.conftest import issue

    desired = engine.desired()
    sample = issue("bench.example.test")
    cert_pem, key_pem = sample.fullchain_pem, sample.key_pem
    cert_sha = hashlib.sha256(cert_pem).hexdigest()
    key_sha = hashlib.sha256(key_pem).hexdigest()
    now = datetime.now(UTC)
    stamps = [db_timestamp(now - timedelta(days=1)), db_timestamp(now + timedelta(days=89))]
    configs = {
        name: (hashlib.sha256(text.encode()).hexdigest(), text)
        for name, t in desired.targets.items()
        for text in (binding_config_json(t, {}),)
    }
    versions, deployments = [], []
    for cert, binding in desired.bindings():
        directory = Path(desired.targets[binding.target].settings["directory"])
        directory.mkdir(parents=True, exist_ok=True)
        crt, key = directory / f"{cert.name}.crt", directory / f"{cert.name}.key"
        crt.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        fp = hashlib.sha256(cert.name.encode()).hexdigest()
        files = json.dumps([[str(crt), "certificate", cert_sha], [str(key), "key", key_sha]])
        deployments.append((cert.name, binding.target, fp, 1, stamps[0], files,
                            *configs[binding.target]))
    for name, cert in desired.certificates.items():
        fp = hashlib.sha256(name.encode()).hexdigest()
        versions.append((name, 1, fp, "1", stamps[0], stamps[1], cert.spec_hash(), stamps[0],
                         cert_pem, b"", b""))
    with engine.store.transaction() as conn:
        conn.executemany(
            "INSERT INTO certificate_versions (certificate, version, fingerprint, serial, "
            "not_before, not_after, spec_hash, issued_at, cert_pem, chain_pem, key_sealed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", versions)
        conn.executemany(
            "INSERT INTO deployments (certificate, target, fingerprint, version, updated_at, "
            "files_json, config_hash, config_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", deployments)
    return len(deployments)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--certs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="repeats of the cheap measurements")
    args = ap.parse_args()
    global CERT_ROOT
    with tempfile.TemporaryDirectory(prefix="certgit-bench-") as tmp:
        root = Path(tmp)
        CERT_ROOT = str(root / "certs")
        t_gen, (origin, files) = timed(lambda: build_repo(root, args.certs))
        print(
            f"generated {args.certs} certificates x 3 bindings, {len(files)} files in {t_gen:.2f}s"
        )

        floors = [timed(lambda: floor_parse(root / "work"))[0] for _ in range(args.repeat)]
        floor = statistics.median(floors)

        # the bench's targets write under root/certs: a site policy allows exactly that
        site = root / "site.toml"
        site.write_text(f'[paths]\nallow = ["{CERT_ROOT}"]\n')
        settings = Settings(
            repo=str(root / "origin.git"),
            ref="main",
            path="",
            state_dir=root / "state",
            site_policy=site,
        )
        engine = Engine(settings)
        t_cold, plan = timed(engine.plan)
        actions = len(plan.actions)  # type: ignore[attr-defined]

        noops = [timed(engine.plan)[0] for _ in range(args.repeat)]
        noop = statistics.median(noops)

        # A restart: new engine, same state dir. Documents come from the blob-id cache.
        restarted = Engine(settings)
        t_restart, _ = timed(restarted.plan)
        restarted.close()

        changes = []
        for r in range(args.repeat):
            head = origin.head.target
            for i in range(10):
                k = r * 10 + i
                files[f"certificates/cert-{k:05d}.yaml"] = cert_doc(k, extra_san=True)
            commit_tree(origin, files, parents=[head])
            changes.append(timed(engine.plan)[0])
        change = statistics.median(changes)

        # Live observation: every binding recorded as deployed, files on disk.
        t_seed, bindings = timed(lambda: seed_deployed(engine, root))
        print(f"seeded {bindings} deployed bindings ({2 * bindings} files) in {t_seed:.2f}s")
        norefresh = [timed(lambda: engine.plan(refresh=False))[0] for _ in range(args.repeat)]
        observed: list[float] = []
        for _ in range(args.repeat):
            t, live_plan = timed(engine.plan)
            observed.append(t)
        drifted = sum(1 for b in live_plan.bindings if str(b.drift) != "in-sync")  # type: ignore[attr-defined]
        engine.close()

        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"plan actions (cold): {actions}")
        row = "{:<36}{:8.3f} s   {}"
        print(row.format("floor (read + PyYAML CSafeLoader):", floor, ""))
        print(row.format("cold load + plan:", t_cold, f"{t_cold / floor:5.2f}x floor (goal <= 2x)"))
        print(
            row.format(
                "no-op re-poll + plan:", noop, f"{100 * noop / t_cold:5.1f}% of cold (goal <= 5%)"
            )
        )
        print(row.format("restart (warm doc cache) + plan:", t_restart, ""))
        print(
            row.format(
                "re-plan after 10 files change:",
                change,
                f"{100 * change / t_cold:5.1f}% of cold (goal <= 10%)",
            )
        )
        t_norefresh, t_observed = statistics.median(norefresh), statistics.median(observed)
        print(row.format("plan, deployed state, --refresh=false:", t_norefresh, ""))
        print(
            row.format(
                "plan, deployed state, observing live:",
                t_observed,
                f"{t_observed / t_norefresh:5.2f}x no-refresh; "
                f"{1e6 * (t_observed - t_norefresh) / max(bindings, 1):.0f} us per binding "
                f"({drifted} not in sync)",
            )
        )
        print(f"{'peak RSS:':<36}{rss_mb:8.1f} MB  (goal <= 300 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
