"""SHA-256 from the interpreter's builtin module, not hashlib.

Every agent call on every host is a fresh process: hashlib loads OpenSSL (~2.5 ms of the host's
CPU per call, 20 hosts sharing two cores on the lab) for the few digests a call takes. The
builtin is the same SHA-256; hashlib stays the fallback for an interpreter built without it.
HMACs take it as their digestmod; `hmac` itself (which loads OpenSSL too) is imported only where
one is made.
"""

try:
    from _sha256 import sha256
except ImportError:
    try:  # Python 3.12 and later name it _sha2
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

__all__ = ["sha256"]
