"""The pure planner: examples for each drift kind, and hypothesis properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from certgit.reconciler.model import (
    ActionKind,
    ApprovalHook,
    ApprovalRule,
    Binding,
    Certificate,
    CertificateVersion,
    Deployment,
    DesiredState,
    Drift,
    Hold,
    Issuer,
    KeyAlgorithm,
    KeySpec,
    LiveObservation,
    Policy,
    RecordedState,
    Target,
    sha256_hex,
)
from certgit.reconciler.planner import Plan, diff

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ISSUER = Issuer(name="ca", type="local-ca")


def cert(name: str, targets: tuple[str, ...], **kw) -> Certificate:
    return Certificate(
        name=name,
        issuer_ref="ca",
        dns_names=kw.pop("dns_names", (f"{name}.example.com",)),
        deploy_to=tuple(Binding(t) for t in targets),
        **kw,
    )


def desired_of(certs, targets=("t1", "t2"), policies=(), target_labels=None) -> DesiredState:
    target_labels = target_labels or {}
    return DesiredState(
        commit="c0ffee",
        issuers={"ca": ISSUER},
        certificates={c.name: c for c in certs},
        targets={t: Target(name=t, type="files", labels=target_labels.get(t, {})) for t in targets},
        policies={p.name: p for p in policies},
    )


def version_for(c: Certificate, n: int, not_after: datetime, spec: str | None = None):
    fp = sha256_hex(f"{c.name}:{n}:{spec or c.spec_hash()}")
    return CertificateVersion(
        certificate=c.name,
        version=n,
        fingerprint=fp,
        serial=f"{n:x}",
        not_before=not_after - c.duration,
        not_after=not_after,
        spec_hash=spec or c.spec_hash(),
        issued_at=not_after - c.duration,
    )


def deployed(c: Certificate, target: str, v: CertificateVersion, **kw) -> Deployment:
    return Deployment(c.name, target, v.fingerprint, v.version, NOW - timedelta(days=1), **kw)


# ----------------------------------------------------------------------------- examples


def test_fresh_repo_issues_once_and_deploys_every_binding() -> None:
    www = cert("www", ("t1", "t2"))
    plan = diff(desired_of([www]), RecordedState(), {}, NOW)
    kinds = [(a.kind, a.target) for a in plan.actions]
    assert kinds == [(ActionKind.ISSUE, None), ("deploy", "t1"), ("deploy", "t2")]
    assert all(a.drift == Drift.MISSING for a in plan.actions)
    assert plan.actions[0].reason == "no certificate issued yet"
    assert plan.actions[1].fingerprint is None and plan.actions[1].spec_hash == www.spec_hash()


def test_in_sync_gives_empty_plan_and_statuses() -> None:
    www = cert("www", ("t1",))
    v = version_for(www, 1, NOW + timedelta(days=60))
    rec = RecordedState(versions={"www": (v,)}, deployments={("www", "t1"): deployed(www, "t1", v)})
    plan = diff(desired_of([www]), rec, {}, NOW)
    assert plan.empty
    assert [(b.drift, b.deployed_fingerprint) for b in plan.bindings] == [
        (Drift.NONE, v.fingerprint)
    ]


def test_renew_before_triggers_renewal_with_reason() -> None:
    www = cert("www", ("t1",), renew_before=timedelta(days=30))
    v = version_for(www, 1, NOW + timedelta(days=12, hours=3))
    rec = RecordedState(versions={"www": (v,)}, deployments={("www", "t1"): deployed(www, "t1", v)})
    plan = diff(desired_of([www]), rec, {}, NOW)
    assert plan.actions[0].kind == ActionKind.RENEW
    assert plan.actions[0].reason == "expiring in 12d < renewBefore 30d"
    assert plan.actions[1].drift == Drift.EXPIRING and plan.actions[1].kind == "deploy"


def test_renew_before_percentage_and_default() -> None:
    www = cert("www", ("t1",), duration=timedelta(days=100), renew_before_percentage=10)
    v = version_for(www, 1, NOW + timedelta(days=11))
    rec = RecordedState(versions={"www": (v,)}, deployments={("www", "t1"): deployed(www, "t1", v)})
    assert diff(desired_of([www]), rec, {}, NOW).empty
    v2 = version_for(www, 1, NOW + timedelta(days=9))
    rec2 = replace(
        rec, versions={"www": (v2,)}, deployments={("www", "t1"): deployed(www, "t1", v2)}
    )
    assert diff(desired_of([www]), rec2, {}, NOW).actions[0].kind == ActionKind.RENEW


def test_expired_certificate_reason() -> None:
    www = cert("www", ("t1",))
    v = version_for(www, 1, NOW - timedelta(days=3))
    rec = RecordedState(versions={"www": (v,)}, deployments={("www", "t1"): deployed(www, "t1", v)})
    assert diff(desired_of([www]), rec, {}, NOW).actions[0].reason == "expired 3d ago"


def test_san_change_reissues() -> None:
    old = cert("www", ("t1",))
    v = version_for(old, 1, NOW + timedelta(days=80))
    new = replace(old, dns_names=("www.example.com", "new.example.com"))
    rec = RecordedState(versions={"www": (v,)}, deployments={("www", "t1"): deployed(old, "t1", v)})
    plan = diff(desired_of([new]), rec, {}, NOW)
    assert [a.kind for a in plan.actions] == [ActionKind.ISSUE, ActionKind.DEPLOY]
    assert plan.actions[0].drift == Drift.OUTDATED


def test_key_change_reissues_but_rotation_policy_alone_does_not() -> None:
    old = cert("www", ("t1",))
    v = version_for(old, 1, NOW + timedelta(days=80))
    rec = RecordedState(versions={"www": (v,)}, deployments={("www", "t1"): deployed(old, "t1", v)})
    rsa = replace(old, key=KeySpec(KeyAlgorithm.RSA, 2048))
    assert diff(desired_of([rsa]), rec, {}, NOW).actions[0].kind == ActionKind.ISSUE
    never = replace(old, key=replace(old.key, rotation="Never"))
    assert diff(desired_of([never]), rec, {}, NOW).empty


def test_outdated_deployment_converges_to_latest_version() -> None:
    www = cert("www", ("t1",))
    v1 = version_for(www, 1, NOW + timedelta(days=50))
    v2 = version_for(www, 2, NOW + timedelta(days=80))
    rec = RecordedState(
        versions={"www": (v1, v2)}, deployments={("www", "t1"): deployed(www, "t1", v1)}
    )
    (action,) = diff(desired_of([www]), rec, {}, NOW).actions
    assert (action.kind, action.fingerprint, action.version) == ("deploy", v2.fingerprint, 2)
    assert action.reason == "v1 deployed, v2 is current"


def test_live_modification_is_drift_and_error_is_not() -> None:
    www = cert("www", ("t1", "t2"))
    v = version_for(www, 1, NOW + timedelta(days=60))
    rec = RecordedState(
        versions={"www": (v,)},
        deployments={(("www", t)): deployed(www, t, v) for t in ("t1", "t2")},
    )
    live = {
        ("www", "t1"): LiveObservation("www", "t1", "ff" * 32, NOW),
        ("www", "t2"): LiveObservation("www", "t2", None, NOW, error="connection refused"),
    }
    (action,) = diff(desired_of([www]), rec, live, NOW).actions
    assert action.target == "t1" and action.drift == Drift.MODIFIED
    assert action.reason == "live sha differs from recorded: modified out of band"
    assert action.fingerprint == v.fingerprint


def test_failing_deployment_is_retried_with_reason() -> None:
    www = cert("www", ("t1",))
    v = version_for(www, 1, NOW + timedelta(days=60))
    dep = Deployment("www", "t1", None, None, NOW, last_error="reload failed", attempts=2)
    rec = RecordedState(versions={"www": (v,)}, deployments={("www", "t1"): dep})
    (action,) = diff(desired_of([www]), rec, {}, NOW).actions
    assert (
        action.drift == Drift.FAILING and "reload failed" in action.reason and "2x" in action.reason
    )


def test_hold_is_left_alone_and_reported() -> None:
    www = cert("www", ("t1", "t2"))
    v1 = version_for(www, 1, NOW + timedelta(days=50))
    v2 = version_for(www, 2, NOW + timedelta(days=80))
    hold = Hold("t1", "www", v1.fingerprint, "bad rollout", "alice", NOW)
    rec = RecordedState(
        versions={"www": (v1, v2)},
        deployments={(("www", t)): deployed(www, t, v1) for t in ("t1", "t2")},
        holds=(hold,),
    )
    plan = diff(desired_of([www]), rec, {}, NOW)
    assert [a.target for a in plan.actions] == ["t2"]
    held = next(b for b in plan.bindings if b.target == "t1")
    assert held.drift == Drift.HELD and "bad rollout" in held.reason


def test_whole_target_hold_covers_every_certificate() -> None:
    a, b = cert("a", ("t1",)), cert("b", ("t1", "t2"))
    rec = RecordedState(holds=(Hold("t1", None, None, "maintenance", "bob", NOW),))
    plan = diff(desired_of([a, b]), rec, {}, NOW)
    assert all(x.target != "t1" for x in plan.actions)
    assert {x.target for x in plan.actions if x.target} == {"t2"}


def test_orphans_reported_and_pruned_only_with_policy() -> None:
    www = cert("www", ("t1",))
    v = version_for(www, 1, NOW + timedelta(days=60))
    old = cert("old", ())
    vo = version_for(old, 1, NOW + timedelta(days=60))
    rec = RecordedState(
        versions={"www": (v,), "old": (vo,)},
        deployments={
            ("www", "t1"): deployed(www, "t1", v),
            ("old", "t2"): deployed(old, "t2", vo),
            ("old", "gone"): deployed(old, "gone", vo),
        },
    )
    plan = diff(desired_of([www]), rec, {}, NOW)
    assert plan.empty
    orphans = {b.target: b for b in plan.bindings if b.drift == Drift.ORPHANED}
    assert set(orphans) == {"t2", "gone"}
    assert "pruneOrphans" in orphans["t2"].reason
    pruned = diff(desired_of([www], policies=[Policy("p", prune_orphans=True)]), rec, {}, NOW)
    # a target that is no longer defined cannot be reached: reported, not acted on
    assert [(a.kind, a.target) for a in pruned.actions] == [(ActionKind.REMOVE, "t2")]


def test_policy_and_target_hook_gate_actions() -> None:
    www = cert("www", ("t1", "t2"), labels={"team": "web"})
    rule = ApprovalRule("prod", target_labels={"env": "production"}, actions=("deploy",))
    desired = desired_of(
        [www],
        policies=[Policy("gate", approvals=(rule,))],
        target_labels={"t1": {"env": "production"}, "t2": {"env": "staging"}},
    )
    plan = diff(desired, RecordedState(), {}, NOW)
    gated = {(a.kind, a.target): a.gated_by for a in plan.actions}
    assert gated[(ActionKind.ISSUE, None)] == ()
    assert gated[(ActionKind.DEPLOY, "t1")] == ("policy gate/prod",)
    assert gated[(ActionKind.DEPLOY, "t2")] == ()
    hooked = replace(
        desired,
        targets={**desired.targets, "t2": replace(desired.targets["t2"], approval=ApprovalHook())},
    )
    plan2 = diff(hooked, RecordedState(), {}, NOW)
    assert [a.gated_by for a in plan2.actions if a.target == "t2"] == [("target t2 approval",)]
    assert plan2.hash != plan.hash


def test_certificate_label_selector() -> None:
    web, db = (
        cert("web", ("t1",), labels={"team": "web"}),
        cert("db", ("t1",), labels={"team": "db"}),
    )
    rule = ApprovalRule("dba", certificate_labels={"team": "db"})
    plan = diff(
        desired_of([web, db], policies=[Policy("p", approvals=(rule,))]), RecordedState(), {}, NOW
    )
    assert {a.certificate for a in plan.actions if a.gated} == {"db"}


def test_plan_requires_aware_now() -> None:
    import pytest

    with pytest.raises(ValueError):
        diff(desired_of([]), RecordedState(), {}, NOW.replace(tzinfo=None))


# ----------------------------------------------------------------------------- properties

NAMES = ["a", "b", "c", "d"]
TARGETS = ["t1", "t2", "t3"]


@st.composite
def worlds(draw):
    """A random desired state plus a random recorded/live state over the same names."""
    certs = []
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4)):
        duration = timedelta(days=draw(st.integers(10, 400)))
        certs.append(
            cert(
                name,
                tuple(draw(st.lists(st.sampled_from(TARGETS), unique=True, max_size=3))),
                duration=duration,
                renew_before=duration * draw(st.integers(1, 90)) / 100,
                dns_names=(f"{name}{draw(st.integers(0, 1))}.example.com",),
                labels={"team": draw(st.sampled_from(["x", "y"]))},
            )
        )
    rules = draw(
        st.lists(
            st.builds(
                ApprovalRule,
                name=st.sampled_from(["r1", "r2"]),
                target_labels=st.sampled_from([{}, {"env": "prod"}]),
                actions=st.sampled_from([(), ("deploy",), ("issue", "remove")]),
            ),
            max_size=2,
        )
    )
    policies = [Policy("p", approvals=tuple(rules), prune_orphans=draw(st.booleans()))]
    desired = desired_of(certs, TARGETS, policies, {"t1": {"env": "prod"}})

    versions: dict[str, tuple[CertificateVersion, ...]] = {}
    deployments: dict[tuple[str, str], Deployment] = {}
    live: dict[tuple[str, str], LiveObservation] = {}
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True)):
        base = desired.certificates.get(name) or cert(name, ())
        n = draw(st.integers(1, 3))
        vs = tuple(
            version_for(
                base,
                i + 1,
                NOW + timedelta(days=draw(st.integers(-5, 400))),
                spec=draw(st.sampled_from([None, "stale-spec"])),
            )
            for i in range(n)
        )
        versions[name] = vs
        for t in draw(st.lists(st.sampled_from(TARGETS), unique=True)):
            v = draw(st.sampled_from(vs))
            failed = draw(st.booleans())
            deployments[(name, t)] = Deployment(
                name,
                t,
                v.fingerprint,
                v.version,
                NOW,
                last_error="boom" if failed else None,
                attempts=1 if failed else 0,
            )
            if draw(st.booleans()):
                fp = draw(st.sampled_from([v.fingerprint, None, "ee" * 32]))
                live[(name, t)] = LiveObservation(name, t, fp, NOW)
    holds = tuple(
        Hold(t, c, None, "pinned", "op", NOW)
        for t, c in draw(
            st.lists(
                st.tuples(st.sampled_from(TARGETS), st.sampled_from([None, *NAMES])), max_size=3
            )
        )
    )
    recorded = RecordedState(versions=versions, deployments=deployments, holds=holds)
    return desired, recorded, live


def execute(plan: Plan, desired: DesiredState, recorded: RecordedState, live: dict):
    """A model executor: record every action of the plan as done, as apply would."""
    versions = {k: list(v) for k, v in recorded.versions.items()}
    deployments = dict(recorded.deployments)
    live = dict(live)
    for action in plan.actions:
        c = desired.certificates.get(action.certificate)
        if action.kind in (ActionKind.ISSUE, ActionKind.RENEW):
            assert c is not None
            n = len(versions.get(c.name, [])) + 1
            versions.setdefault(c.name, []).append(version_for(c, n, NOW + c.duration))
        elif action.kind == ActionKind.DEPLOY:
            v = versions[action.certificate][-1]
            assert action.fingerprint in (None, v.fingerprint)
            deployments[(action.certificate, action.target)] = Deployment(
                action.certificate, action.target, v.fingerprint, v.version, NOW
            )
            live.pop((action.certificate, action.target), None)
        elif action.kind == ActionKind.REMOVE:
            del deployments[(action.certificate, action.target)]
            live.pop((action.certificate, action.target), None)
    return (
        replace(
            recorded,
            versions={k: tuple(v) for k, v in versions.items()},
            deployments=deployments,
        ),
        live,
    )


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_planner_is_deterministic(world) -> None:
    desired, recorded, live = world
    p1 = diff(desired, recorded, live, NOW)
    reordered = replace(desired, certificates=dict(reversed(list(desired.certificates.items()))))
    p2 = diff(
        reordered,
        replace(recorded, deployments=dict(reversed(list(recorded.deployments.items())))),
        dict(reversed(list(live.items()))),
        NOW,
    )
    assert p1 == p2
    assert p1.hash == p2.hash
    assert [a.id for a in p1.actions] == [a.id for a in p2.actions]


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_plan_executed_replans_to_empty(world) -> None:
    desired, recorded, live = world
    plan = diff(desired, recorded, live, NOW)
    recorded2, live2 = execute(plan, desired, recorded, live)
    again = diff(desired, recorded2, live2, NOW)
    assert again.actions == (), [a.to_dict() for a in again.actions]


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_no_action_targets_a_held_binding(world) -> None:
    desired, recorded, live = world
    plan = diff(desired, recorded, live, NOW)
    for action in plan.actions:
        if action.target is not None:
            assert recorded.hold_for(action.certificate, action.target) is None
    for status in plan.bindings:
        if recorded.hold_for(status.certificate, status.target):
            assert status.drift == Drift.HELD
