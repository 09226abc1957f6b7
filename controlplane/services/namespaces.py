"""Namespace use cases: keys, tokens, trust, and who may see what.

The ``system`` namespace is the administrator. Every other namespace sees only
its own objects; an object of another namespace looks exactly like a missing
one. A namespace may trust others (``trust``): they then see its artifacts and
may use them as disk bases (``trusted_by``; artifacts only, and read only).
Namespace records are few and read on every call, so they are cached in
memory; every write goes through this service, which keeps the cache true.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from common import accesstoken
from common.signing import SigningKey, new_signing_key
from controlplane import tokens
from controlplane.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from controlplane.loginguard import LoginGuard, Policy
from controlplane.store.namespaces import Key, Namespace, Namespaces
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import Conflict

log = structlog.get_logger(__name__)

SYSTEM = "system"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_KEY_LENGTH = 1024
DEPLOY_KEY = "deploy"
# Times start reads again when another control plane wrote the system namespace meanwhile.
START_ATTEMPTS = 5


def can_see(caller: str, owner: str) -> bool:
    """Whether a caller namespace may see an object owned by owner."""
    return caller in (SYSTEM, owner)


def require_system(caller: str, what: str) -> None:
    """Refuse administrator-only operations to other namespaces."""
    if caller != SYSTEM:
        raise PermissionDenied(f"only the system namespace may {what}")


class NamespaceService:
    """Namespaces, their keys, and the tokens minted from them."""

    def __init__(
        self,
        namespaces: Namespaces,
        clock: Callable[[], float],
        token_ttl: float,
        *,
        guard: LoginGuard | None = None,
        concurrency: int = 2,
        queue: int = 64,
        signing_key: SigningKey | None = None,
        keyring: accesstoken.Keyring | None = None,
        skew: float = accesstoken.SKEW,
    ) -> None:
        """Without a signing key, a fresh one is made (its tokens die with the process)."""
        self.namespaces = namespaces
        self.clock = clock
        self.token_ttl = token_ttl
        self.guard = guard if guard is not None else LoginGuard(Policy())
        self._checks_total = max(1, concurrency)
        self._checks = asyncio.Semaphore(self._checks_total)
        self._queue = max(0, queue)
        self._waiting = 0
        self._secret = b""
        self.signing_key = signing_key if signing_key is not None else new_signing_key()
        self.keyring = (
            keyring if keyring is not None else accesstoken.Keyring([self.signing_key.public])
        )
        self.skew = skew
        self._cache: dict[str, Namespace] = {}
        # (namespace, key name, nonce) -> HMAC of the key that matched it.
        self._verified: dict[tuple[str, str, str], bytes] = {}

    async def start(self, system_key: str = "", key_file: Path | None = None) -> None:
        """Load the secret and namespaces; make sure the system namespace can log in.

        With ``system_key`` the system namespace's "deploy" key is set to it.
        Without, and when the system namespace has no key yet, a random key is
        made and written to ``key_file`` (mode 0600) for the operator.
        """
        self._secret = await self.namespaces.secret()
        # Replicas starting together race to make the system namespace and its key: the
        # one that loses reads what the other wrote and goes on from there.
        for attempt in range(START_ATTEMPTS):
            try:
                await self._start(system_key, key_file)
                return
            except Conflict:
                if attempt == START_ATTEMPTS - 1:
                    raise
                log.info("another control plane set up the system namespace meanwhile")

    async def _start(self, system_key: str, key_file: Path | None) -> None:
        self._cache = {ns.name: ns for ns in await self.namespaces.list_all()}
        system = self._cache.get(SYSTEM) or await self._write(
            Namespace(name=SYSTEM, created_at=self.clock())
        )
        if system_key:
            current = system.keys.get(DEPLOY_KEY)
            if current is None or not tokens.key_matches(system_key, current.salt, current.hash):
                await self.add_key(SYSTEM, SYSTEM, DEPLOY_KEY, system_key)
        elif not system.keys:
            generated = secrets.token_urlsafe(24)
            await self.add_key(SYSTEM, SYSTEM, DEPLOY_KEY, generated)
            if key_file is not None:
                key_file.parent.mkdir(parents=True, exist_ok=True)
                key_file.touch(mode=0o600)
                key_file.write_text(generated + "\n")
                log.warning("generated a system key", key_file=str(key_file))

    # -- tokens -------------------------------------------------------------

    async def token(self, namespace: str, key: str, client: str = "") -> tuple[str, int]:
        """A signed token and its lifetime in seconds, for a namespace and one of its keys.

        ``client`` is the caller's address. Failed tries slow down the
        namespace and the address (``controlplane.loginguard``): while either
        waits out a backoff, a try is refused as Unauthenticated without
        checking the key, unless the key is one already verified since start
        (that costs no scrypt, so the right key is not held back).
        """
        if not namespace:
            raise InvalidArgument("missing namespace in request")
        if not key:
            raise InvalidArgument("missing key in request")
        subjects = [f"namespace:{namespace}", *([f"address:{client}"] if client else [])]
        ns = self._cache.get(namespace)
        live = ns is not None and ns.state == "created"
        name = self._remembered_key(ns, key) if ns is not None and live else None
        if name is None:
            wait = self.guard.wait(subjects if live else subjects[1:], self.clock())
            if wait > 0:
                log.warning("login refused during backoff", namespace=namespace, client=client)
                raise Unauthenticated(f"too many failed logins; retry in {math.ceil(wait)} s")
            if ns is None or not live:
                self.guard.failed(subjects[1:], self.clock())
                raise NotFound("namespace not found")
            name = await self._checked_key(ns, key)
        if name is None or ns is None:
            self.guard.failed(subjects, self.clock())
            log.warning("authentication failed", namespace=namespace, client=client)
            raise Unauthenticated("unauthorized")
        self.guard.succeeded(subjects)
        ttl = int(self.token_ttl)
        now = int(self.clock())
        claims = accesstoken.Claims(
            namespace=namespace,
            key_name=name,
            key_nonce=ns.keys[name].nonce,
            issued_at=now,
            expires_at=now + ttl,
            token_id=accesstoken.new_token_id(),
        )
        log.info(
            "token issued",
            namespace=namespace,
            key_name=name,
            jti=claims.token_id,
            kid=self.signing_key.key_id,
        )
        return accesstoken.mint(self.signing_key, claims), ttl

    def _remembered_key(self, ns: Namespace, key: str) -> str | None:
        """The name of a key of the namespace that this key matched before, or None.

        A key checked once is remembered as an HMAC under the signing secret
        (keyed by its nonce, so replacing the key forgets it): a thousand node
        agents reconnecting with one key cost one scrypt, not a thousand.
        """
        fast = tokens.remember(self._secret, key)
        for name, stored in sorted(ns.keys.items()):
            known = self._verified.get((ns.name, name, stored.nonce))
            if known is not None and hmac.compare_digest(known, fast):
                return name
        return None

    async def _checked_key(self, ns: Namespace, key: str) -> str | None:
        """The name of the namespace's key that key is, checked by scrypt, or None.

        The scrypt runs off the event loop (hashlib releases the GIL), at most
        ``concurrency`` at a time with at most ``queue`` waiting; beyond that
        a login is refused as Unavailable, so a flood of logins cannot take the
        control plane's CPU.
        """
        if self._waiting >= self._queue + self._checks_total:
            raise Unavailable("too many logins in progress; retry")
        self._waiting += 1
        try:
            async with self._checks:
                for name, stored in sorted(ns.keys.items()):
                    if await asyncio.to_thread(tokens.key_matches, key, stored.salt, stored.hash):
                        fast = tokens.remember(self._secret, key)
                        self._verified[(ns.name, name, stored.nonce)] = fast
                        return name
        finally:
            self._waiting -= 1
        return None

    def authenticate(self, token: str) -> str:
        """The namespace a bearer token speaks for (Unauthenticated if it does not).

        The signature and the clock are checked first, with the public keys
        alone; then, in memory, that the namespace and the key the token was
        minted with still exist (deleting either revokes its tokens).
        """
        try:
            claims = accesstoken.verify(self.keyring, token, self.clock(), self.skew)
        except accesstoken.TokenError as exc:
            raise Unauthenticated(str(exc)) from None
        ns = self._cache.get(claims.namespace)
        if ns is None or ns.state != "created":
            raise Unauthenticated("the token's namespace no longer exists")
        key = ns.keys.get(claims.key_name)
        if key is None or key.nonce != claims.key_nonce:
            raise Unauthenticated("the token's key was deleted or replaced")
        return claims.namespace

    def acting_as(self, caller: str, requested: str) -> str:
        """The namespace a call acts in: system may name another one; others cannot."""
        if not requested or requested == caller or caller != SYSTEM:
            return caller
        ns = self._cache.get(requested)
        if ns is None or ns.state != "created":
            raise NotFound(f"namespace {requested!r} not found")
        return requested

    # -- namespaces and keys -------------------------------------------------

    async def create(self, caller: str, name: str, key_name: str = "", key: str = "") -> Namespace:
        """A new namespace (system only), optionally with a first key."""
        require_system(caller, "create namespaces")
        if not NAME_RE.match(name or ""):
            raise InvalidArgument(
                "a namespace name is 1-63 letters, digits, '-', '_' or '.', starting alnum"
            )
        existing = self._cache.get(name)
        if existing is not None and existing.state == "created":
            raise AlreadyExists(f"namespace {name!r} already exists")
        if bool(key_name) != bool(key):
            raise InvalidArgument("give both key_name and key, or neither")
        keys = {key_name: self._new_key(key_name, key)} if key else {}
        ns = Namespace(
            name=name,
            keys=keys,
            created_at=self.clock(),
            version=existing.version if existing else 0,
        )
        stored = await self._write(ns)
        log.info("namespace created", namespace=name)
        return stored

    def get(self, caller: str, name: str) -> Namespace:
        """A namespace the caller may see (its own; any for system)."""
        ns = self._cache.get(name)
        if ns is None or ns.state != "created" or not can_see(caller, name):
            raise NotFound("namespace not found")
        return ns

    def list_all(self, caller: str) -> list[Namespace]:
        """The caller's namespace, or every live namespace for system."""
        return sorted(
            (
                ns
                for ns in self._cache.values()
                if ns.state == "created" and can_see(caller, ns.name)
            ),
            key=lambda ns: ns.name,
        )

    async def delete(self, caller: str, name: str, live_instances: int) -> Namespace:
        """Mark a namespace deleted (system only; refused while it has live instances)."""
        require_system(caller, "delete namespaces")
        if name == SYSTEM:
            raise FailedPrecondition("you cannot delete the system namespace")
        ns = self.get(caller, name)
        if live_instances:
            raise FailedPrecondition(
                f"namespace {name!r} still has {live_instances} instance(s); delete them first"
            )
        stored = await self._write(ns.with_changes(state="deleted", keys={}, trusted=()))
        for other in self.trusted_by(name):
            # A namespace made later with the same name is not trusted by anyone.
            await self.untrust(SYSTEM, other, name)
        log.info("namespace deleted", namespace=name)
        return stored

    def trusted_by(self, name: str) -> list[str]:
        """The live namespaces that trust this one, by name."""
        return sorted(
            ns.name
            for ns in self._cache.values()
            if ns.state == "created" and name in ns.trusted and ns.name != name
        )

    async def trust(self, caller: str, namespace: str, trusted: str) -> Namespace:
        """Let ``trusted`` see and use the namespace's artifacts (system, or the namespace)."""
        return await self._set_trust(caller, namespace, trusted, True)

    async def untrust(self, caller: str, namespace: str, trusted: str) -> Namespace:
        """Stop trusting a namespace (not trusted: nothing changes)."""
        return await self._set_trust(caller, namespace, trusted, False)

    async def _set_trust(self, caller: str, namespace: str, trusted: str, on: bool) -> Namespace:
        if not trusted:
            raise InvalidArgument("name the namespace to trust")
        if trusted == namespace:
            return self.get(caller, namespace)  # a namespace always sees its own artifacts
        if on:
            other = self._cache.get(trusted)
            if other is None or other.state != "created":
                raise NotFound(f"namespace {trusted!r} not found")

        async def attempt() -> Namespace:
            ns = self.get(caller, namespace)
            kept = tuple(n for n in ns.trusted if n != trusted)
            wanted = (*kept, trusted) if on else kept
            if wanted == ns.trusted:
                return ns
            return await self._write(ns.with_changes(trusted=wanted))

        stored = await retry_on_conflict(attempt, f"namespace {namespace}")
        log.info("trust set" if on else "trust removed", namespace=namespace, trusted=trusted)
        return stored

    async def add_key(self, caller: str, namespace: str, key_name: str, key: str) -> Namespace:
        """Add or replace a key (system, or the namespace itself)."""
        if not KEY_NAME_RE.match(key_name or "") or key_name.startswith("_service_key"):
            raise InvalidArgument("illegal key name")
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidArgument(f"a key is 1-{MAX_KEY_LENGTH} characters")
        new_key = self._new_key(key_name, key)

        async def attempt() -> Namespace:
            ns = self.get(caller, namespace)
            return await self._write(ns.with_changes(keys={**ns.keys, key_name: new_key}))

        stored = await retry_on_conflict(attempt, f"namespace {namespace}")
        log.info("key set", namespace=namespace, key_name=key_name)
        return stored

    async def delete_key(self, caller: str, namespace: str, key_name: str) -> Namespace:
        """Remove a key, revoking the tokens minted with it."""
        ns = self.get(caller, namespace)
        if key_name not in ns.keys:
            raise NotFound("key name not found in namespace")
        stored = await self._write(
            ns.with_changes(keys={k: v for k, v in ns.keys.items() if k != key_name})
        )
        log.info("key deleted", namespace=namespace, key_name=key_name)
        return stored

    async def update_metadata(
        self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply change to a namespace's metadata (compare-and-set, retried)."""

        async def attempt() -> dict[str, Any]:
            ns = self._cache.get(name)
            if ns is None or ns.state != "created":
                raise NotFound("namespace not found")
            metadata = change(dict(ns.metadata))
            await self._write(ns.with_changes(metadata=metadata))
            return metadata

        return await retry_on_conflict(attempt, f"namespace {name}")

    def _new_key(self, key_name: str, key: str) -> Key:
        salt, digest = tokens.hash_key(key)
        return Key(salt=salt, hash=digest, nonce=tokens.new_nonce(), created_at=self.clock())

    async def _write(self, ns: Namespace) -> Namespace:
        """Store ns with compare-and-set; on Conflict the cache is reloaded first."""
        try:
            stored = await self.namespaces.put(ns)
        except Conflict:
            await self._reload(ns.name)
            raise
        self._cache[ns.name] = stored
        return stored

    async def _reload(self, name: str) -> None:
        found = await self.namespaces.get(name)
        if found is not None:
            self._cache[name] = found
