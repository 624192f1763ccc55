"""`certgit status`: filters (--target, --certificate, --drift, --label) and the
extra columns (days left, SANs, key type; file paths per binding with --wide)."""

from __future__ import annotations

import argparse

from certgit.reconciler.model import Drift


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label: write KEY=VALUE")
    return key, value


def add_status_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (repeat a flag for OR; different flags AND)")
    g.add_argument("--target", action="append", metavar="NAME", help="only bindings to NAME")
    g.add_argument("--certificate", action="append", metavar="NAME",
                   help="only bindings of certificate NAME")
    g.add_argument("--drift", action="append", metavar="KIND",
                   choices=[str(d) for d in Drift],
                   help="only this drift kind: " + ", ".join(str(d) for d in Drift))
    g.add_argument("--label", action="append", type=_label, metavar="KEY=VALUE",
                   help="only bindings whose certificate or target carries this label")
    p.add_argument("--wide", action="store_true",
                   help="also show the files each binding's last deploy wrote")
