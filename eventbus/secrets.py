"""Hashed client secrets: scrypt in a self-describing text form.

A hashed secret in the configuration looks like::

    scrypt$16384$8$1$<salt>$<hash>

the scrypt cost parameters N, r and p, then the salt and the derived key,
both in standard base64 without padding. ``hash_secret`` makes one;
``verify_secret`` checks a presented secret against one in constant time.
Any ``client_secret`` that does not start with ``scrypt$`` is a plain secret.

``python -m eventbus.secrets`` prints the hash of a secret read from standard
input (or prompted for, twice, on a terminal)::

    printf '%s' 'my secret' | python -m eventbus.secrets
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass

PREFIX = "scrypt$"
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
#: Parameters past these would let a config file exhaust memory or CPU.
MAX_MEMORY_BYTES = 256 * 1024 * 1024
MAX_P = 16


@dataclass(frozen=True)
class ScryptHash:
    """The parts of one ``scrypt$N$r$p$salt$hash`` string."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def encode(self) -> str:
        return f"{PREFIX}{self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.key)}"

    def derive(self, secret: bytes) -> bytes:
        """The derived key for ``secret`` under these parameters (slow on purpose)."""
        memory = 128 * self.r * self.n * self.p
        return hashlib.scrypt(
            secret,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            dklen=len(self.key),
            maxmem=memory + 1024 * 1024,
        )

    def matches(self, secret: bytes) -> bool:
        return hmac.compare_digest(self.derive(secret), self.key)


def is_hashed(value: str) -> bool:
    """True when a configured secret is in the hashed form (starts ``scrypt$``)."""
    return value.startswith(PREFIX)


def parse(encoded: str) -> ScryptHash:
    """The parts of a hashed secret; ValueError saying what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != PREFIX[:-1]:
        raise ValueError("a hashed secret must look like scrypt$N$r$p$salt$hash")
    try:
        n, r, p = (int(x) for x in parts[1:4])
    except ValueError:
        raise ValueError("scrypt N, r and p must be integers") from None
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= MAX_P:
        raise ValueError(f"scrypt N must be a power of 2 above 1, r at least 1, p from 1 to {MAX_P}")
    if 128 * r * n * p > MAX_MEMORY_BYTES:
        raise ValueError(f"scrypt parameters need more than {MAX_MEMORY_BYTES // 2**20} MiB")
    try:
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (binascii.Error, ValueError):
        raise ValueError("scrypt salt and hash must be base64") from None
    if not salt or not 16 <= len(key) <= 64:
        raise ValueError("scrypt salt must not be empty and the hash must be 16 to 64 bytes")
    return ScryptHash(n, r, p, salt, key)


def hash_secret(secret: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new hashed form of ``secret``, with a random salt."""
    template = ScryptHash(n, r, p, os.urandom(SALT_BYTES), b"\0" * KEY_BYTES)
    key = template.derive(secret.encode("utf-8"))
    return ScryptHash(n, r, p, template.salt, key).encode()


def verify_secret(secret: str, encoded: str) -> bool:
    """True when ``secret`` is the one ``encoded`` was made from."""
    try:
        presented = secret.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return parse(encoded).matches(presented)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _read_secret() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("secret: ")
        if getpass.getpass("again: ") != first:
            raise SystemExit("eventbus: the two secrets differ")
        return first
    text = sys.stdin.read()
    # One trailing line end is the shell's, not the secret's.
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def main() -> int:
    """Print the hashed form of a secret read from stdin or a prompt."""
    secret = _read_secret()
    if not secret:
        sys.stderr.write("eventbus: the secret must not be empty\n")
        return 2
    sys.stdout.write(hash_secret(secret) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
