"""Token settings of the control plane and the gateway, and the gateway's own token check."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.accesstoken import Claims, Keyring, mint
from common.signing import new_signing_key
from controlplane.settings import Settings
from gateway.errors import HttpError
from gateway.settings import GatewaySettings
from gateway.tokencheck import TokenCheck

KEY = new_signing_key()
TOKEN = mint(KEY, Claims("team", "k", "n", 1000, 1900))


PLAIN = {"MINICLOUD_GATEWAY_PLAINTEXT": "1"}


def test_the_control_plane_reads_its_token_key_settings() -> None:
    """Signing key path (default under the data dir), more public keys, the skew."""
    base = Settings.from_env({"MINICLOUD_DATA_DIR": "/d", "MINICLOUD_PLAINTEXT": "1"})
    assert base.signing_key_path() == Path("/d/token-signing-key")
    assert base.token_public_keys == () and base.token_clock_skew == 30.0
    s = Settings.from_env(
        {
            "MINICLOUD_TOKEN_SIGNING_KEY": "/k/sign",
            "MINICLOUD_TOKEN_PUBLIC_KEYS": "/k/a.pub, /k/b.pub,",
            "MINICLOUD_TOKEN_CLOCK_SKEW": "5",
            "MINICLOUD_PLAINTEXT": "1",
        }
    )
    assert s.signing_key_path() == Path("/k/sign")
    assert s.token_public_keys == (Path("/k/a.pub"), Path("/k/b.pub"))
    assert s.token_clock_skew == 5.0


def test_the_gateway_reads_its_token_key_settings() -> None:
    """The public key files and the skew."""
    assert GatewaySettings.from_env(PLAIN).token_public_keys == ()
    s = GatewaySettings.from_env(
        {
            "MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS": "/k/a.pub,/k/b.pub",
            "MINICLOUD_GATEWAY_TOKEN_CLOCK_SKEW": "0",
            **PLAIN,
        }
    )
    assert s.token_public_keys == (Path("/k/a.pub"), Path("/k/b.pub"))
    assert s.token_clock_skew == 0.0


def status(check: TokenCheck, header: str | None) -> int:
    try:
        check(header)
    except HttpError as exc:
        return exc.status
    return 200


def test_the_gateway_check_takes_good_tokens_and_refuses_the_rest() -> None:
    """A good token passes; none, another scheme, or an expired one is 401."""
    check = TokenCheck(Keyring([KEY.public]), skew=0, clock=lambda: 1500)
    assert status(check, f"Bearer {TOKEN}") == 200
    for header in (None, "", "Bearer", f"Basic {TOKEN}", "Bearer x.y.z"):
        assert status(check, header) == 401
    assert status(TokenCheck(Keyring([KEY.public]), 0, lambda: 1900), f"Bearer {TOKEN}") == 401
    assert status(TokenCheck(Keyring([KEY.public]), 30, lambda: 1920), f"Bearer {TOKEN}") == 200


@pytest.mark.parametrize("header", [None, "", "Basic abc"])
def test_without_keys_the_gateway_still_wants_a_bearer_header(header: str | None) -> None:
    """With no keys it cannot judge a token, but a missing bearer header is still 401."""
    check = TokenCheck(None)
    assert status(check, header) == 401
    assert status(check, "Bearer anything") == 200
