"""Test-session set-up: structured logs to stderr, as the entry points configure them."""

from __future__ import annotations

from common import logs

logs.configure()
