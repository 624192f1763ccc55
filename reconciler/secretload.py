"""Load-time resolution of `secretRef: {sops: {file, key}}` (DesiredLoader's last step).

For every valid model holding a sops ref, the named file of the same commit
is decrypted (`certgit.reconciler.sops`, once per file per load) and the
value of `key` attached to a copy of the model (`SecretRef.value`, a
`SecretBytes`). The cached models are never touched, so the document cache
never holds a decrypted value; the caller keeps the copies in memory only.

Anything that stops a value from being read is a positioned problem at the
ref's `sops` key: no age key configured, key file missing or unreadable,
file not in the commit, not a SOPS file, not decryptable with the key, no
such key, or a value that is not a string. No message holds a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from certgit.reconciler.errors import Problem
from certgit.reconciler.model import FileEntry, Issuer, SecretBytes, SecretRef

if TYPE_CHECKING:
    from certgit.reconciler.desired import _Doc, _Positions

# (model field, YAML path of the ref) for every secretRef a model may hold
_ISSUER_REFS = (
    ("ca_certificate", ("spec", "localCA", "certificateRef")),
    ("ca_key", ("spec", "localCA", "keyRef")),
)


def _sops_refs(model: Any) -> Iterator[tuple[str, tuple[str, ...], SecretRef]]:
    if isinstance(model, Issuer):
        for field, path in _ISSUER_REFS:
            ref = getattr(model, field)
            if ref is not None and ref.sops is not None:
                yield field, path, ref


def decrypt_sops_refs(
    located: Sequence[tuple[FileEntry, _Doc]],
    files: Iterable[FileEntry],
    decryptor: Any,
    positions: _Positions,
) -> tuple[dict[tuple[str, str], Any], list[Problem]]:
    """({(kind, name): model with decrypted values}, problems) for the commit's sops refs."""
    wanted = [
        (entry, doc, field, path, ref)
        for entry, doc in located
        for field, path, ref in _sops_refs(doc.model)
    ]
    if not wanted:
        return {}, []
    from certgit.reconciler.sops import SopsDecryptor, SopsError

    sops = decryptor if decryptor is not None else SopsDecryptor(None)
    by_path = {entry.path: entry for entry in files}
    documents: dict[str, Mapping[str, Any] | SopsError] = {}  # by content key, this load only
    replaced: dict[tuple[str, str], Any] = {}
    problems: list[Problem] = []
    for entry, doc, field, path, ref in wanted:
        assert ref.sops is not None
        where = f'{doc.kind} "{doc.name}": {".".join(path)}.sops'
        source = by_path.get(ref.sops.file)
        if source is None:
            message = (
                f"{where}: no file {ref.sops.file} in this commit; commit the SOPS file or "
                "fix the path (relative to the desired-state root)"
            )
            problems.append(positions.problem(entry, doc.index, (*path, "sops", "file"), message))
            continue
        document = documents.get(source.key)
        if document is None:
            try:
                document = sops.decrypt(source.path, source.read())
            except SopsError as exc:
                document = exc
            documents[source.key] = document
        if isinstance(document, SopsError):
            message = f"{where}: cannot decrypt {ref.sops.file}: {document}"
            problems.append(positions.problem(entry, doc.index, (*path, "sops"), message))
            continue
        value = document.get(ref.sops.key)
        if not isinstance(value, str):
            if ref.sops.key not in document:
                names = ", ".join(sorted(k for k in document if k != "sops")) or "none"
                why = f"has no key {ref.sops.key!r} (its keys: {names})"
            else:
                why = f"holds no string at key {ref.sops.key!r}"
            message = f"{where}: {ref.sops.file} {why}; fix secretRef.sops.key or the file"
            problems.append(positions.problem(entry, doc.index, (*path, "sops", "key"), message))
            continue
        model: Any = replaced.get((doc.kind, doc.name), doc.model)
        secret = replace(ref, value=SecretBytes(value.encode()))
        replaced[(doc.kind, doc.name)] = replace(model, **{field: secret})
    return replaced, problems
