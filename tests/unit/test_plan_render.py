"""Snapshot of `certgit plan`'s human output with field-level changes.

A fixed desired and recorded state (no clock, no I/O) goes through the pure
planner and the renderer; the text is compared with the committed snapshot
`snapshots/plan_field_changes.txt`. Regenerate it on purpose with
CERTGIT_UPDATE_SNAPSHOTS=1 and review the diff like code.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from certgit.reconciler.model import (
    KeyAlgorithm,
    KeySpec,
    RecordedState,
    Target,
    binding_config_hash,
    binding_config_json,
    canonical_json,
)
from certgit.reconciler.planner import diff
from certgit.reconciler.render import render_plan
from tests.unit.test_planner import NOW, cert, deployed, desired_of, version_for

SNAPSHOT = Path(__file__).parent / "snapshots" / "plan_field_changes.txt"


def _plan_text() -> str:
    old = cert("shop", ("t1",), dns_names=("shop.example.com",),
               key=KeySpec(KeyAlgorithm.RSA, 2048), duration=timedelta(days=90))
    new = replace(old, dns_names=("shop.example.com", "www.shop.example.com"),
                  key=KeySpec(KeyAlgorithm.ECDSA, 256), duration=timedelta(days=30))
    api = cert("api", ("t1",))
    v1 = replace(version_for(old, 1, NOW + timedelta(days=60)),
                 spec_json=canonical_json(old.issued_spec()))
    a1 = version_for(api, 1, NOW + timedelta(days=60))
    desired = desired_of([new, api], targets=("t1",))
    before = Target(name="t1", type="files", settings={"directory": "/srv/a"})
    desired = replace(
        desired, targets={"t1": Target(name="t1", type="files", settings={"directory": "/srv/b"})}
    )
    recorded = RecordedState(
        versions={"shop": (v1,), "api": (a1,)},
        deployments={
            ("shop", "t1"): deployed(old, "t1", v1),
            ("api", "t1"): deployed(api, "t1", a1, config_hash=binding_config_hash(before, {}),
                                    config_json=binding_config_json(before, {})),
        },
    )
    return render_plan(diff(desired, recorded, {}, NOW)) + "\n"


def test_plan_human_output_shows_field_level_changes() -> None:
    text = _plan_text()
    if os.environ.get("CERTGIT_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), text
    for line in ("+ dnsNames: www.shop.example.com", "~ key: RSA 2048 → ECDSA P-256",
                 "~ duration: 90d → 30d", "~ directory: /srv/a → /srv/b"):
        assert line in text
