"""Moved to `certgit.reconciler.store.doccache` (all SQL lives in the store package)."""

from certgit.reconciler.store.doccache import RETAIN_SECONDS, DocumentCache, code_namespace

__all__ = ["RETAIN_SECONDS", "DocumentCache", "code_namespace"]
