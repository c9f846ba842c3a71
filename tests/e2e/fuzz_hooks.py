"""Schemathesis hooks for the API fuzz test (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import schemathesis

# The pod's output upload (a .tar.gz) is sent as the raw bytes generated for it.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
