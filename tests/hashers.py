"""A real password hasher (MD5: fast) that counts the hashes it computes, for the tests that
show a failed sign-in costs at most one hash and a locked-out one none (performance.md R8).
Kept outside the test modules so Django's ``PASSWORD_HASHERS`` import and the tests see the
same class."""

from __future__ import annotations

from django.contrib.auth.hashers import MD5PasswordHasher


class CountingHasher(MD5PasswordHasher):
    algorithm = "counting_md5"
    calls = 0

    def encode(self, password, salt):
        """Every hash goes through here: ``verify`` (a wrong password) re-encodes, and the
        unknown-user path of Django's ModelBackend encodes a dummy once."""
        type(self).calls += 1
        return super().encode(password, salt)
