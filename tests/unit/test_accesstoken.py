"""Access tokens: Ed25519-signed, JWT-style, checked with the public keys alone."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from common import accesstoken
from common.accesstoken import SKEW, Claims, Keyring, TokenError, bearer, mint, verify
from common.signing import (
    SigningError,
    load_public_keys,
    load_signing_key,
    new_signing_key,
)

KEY = new_signing_key()
OTHER = new_signing_key()
NOW = 1_000_000
CLAIMS = Claims("team", "deploy", "nonce1", NOW, NOW + 900, "tid")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def part(data: Any) -> str:
    return b64(json.dumps(data).encode())


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
        signature,
    )


def signed(header: dict[str, Any], payload: dict[str, Any], key: Any = KEY) -> str:
    """A token with any header and payload, genuinely signed by key."""
    body = f"{part(header)}.{part(payload)}"
    return f"{body}.{b64(key.sign(body.encode()))}"


def refused(token: str, now: float = NOW, keyring: Keyring | None = None) -> str:
    with pytest.raises(TokenError) as caught:
        verify(keyring or Keyring([KEY.public]), token, now)
    return str(caught.value)


def test_a_minted_token_verifies_to_its_claims() -> None:
    """A token made with a key is taken by a keyring holding its public half."""
    token = mint(KEY, CLAIMS)
    assert verify(Keyring([KEY.public]), token, NOW + 1) == CLAIMS


def test_the_token_is_a_jwt_with_a_pinned_algorithm_and_key_id() -> None:
    """Header EdDSA/JWT with the key id; the payload holds the registered claims."""
    header, payload, signature = parts(mint(KEY, CLAIMS))
    assert header == {"alg": "EdDSA", "kid": KEY.key_id, "typ": "JWT"}
    assert payload == {
        "sub": "team",
        "key": "deploy",
        "knc": "nonce1",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
        "jti": "tid",
    }
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64


def test_an_expired_token_is_refused_after_the_skew() -> None:
    """A token is taken until its expiry plus the allowed skew, and not after."""
    token = mint(KEY, CLAIMS)
    verify(Keyring([KEY.public]), token, CLAIMS.expires_at + SKEW - 1)
    assert refused(token, CLAIMS.expires_at + SKEW) == "token expired"


def test_a_token_not_yet_valid_is_refused_beyond_the_skew() -> None:
    """A token from a clock ahead by less than the skew is taken; further ahead it is not."""
    token = mint(KEY, CLAIMS)
    verify(Keyring([KEY.public]), token, NOW - SKEW + 1)
    assert refused(token, NOW - SKEW - 1) == "token not yet valid"


def test_a_tampered_payload_is_refused() -> None:
    """Changing the namespace (or any claim) breaks the signature."""
    token = mint(KEY, CLAIMS)
    header, _, signature = token.split(".")
    claims = parts(token)[1]
    for change in ({"sub": "system"}, {"exp": NOW + 10**6}, {"knc": "other"}):
        forged = f"{header}.{part({**claims, **change})}.{signature}"
        assert refused(forged) == "invalid token signature"


def test_a_tampered_signature_is_refused() -> None:
    """A flipped bit, a truncated or an empty signature are refused."""
    token = mint(KEY, CLAIMS)
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 1
    assert refused(f"{header}.{payload}.{b64(bytes(raw))}") == "invalid token signature"
    assert refused(f"{header}.{payload}.{b64(bytes(raw[:32]))}") == "invalid token signature"
    assert refused(f"{header}.{payload}.") == "malformed token"


def test_another_keys_token_is_refused() -> None:
    """A token signed by a key the keyring does not hold is refused, even naming a known kid."""
    assert refused(mint(OTHER, CLAIMS)) == "token signed by an unknown key"
    header, payload, _ = parts(mint(OTHER, CLAIMS))
    lying = signed({**header, "kid": KEY.key_id}, payload, OTHER)
    assert refused(lying) == "invalid token signature"


def test_alg_none_and_other_algorithms_are_refused() -> None:
    """Only EdDSA is taken: "none" (unsigned), HMAC with the public key as secret, RSA."""
    header, payload, _ = parts(mint(KEY, CLAIMS))
    for alg in ("none", "None", "HS256", "RS256", "ES256", "", None):
        forged = f"{part({**header, 'alg': alg})}.{part(payload)}."
        assert refused(forged) == "token algorithm not accepted"
        forged = signed({**header, "alg": alg}, payload)
        assert refused(forged) == "token algorithm not accepted"
    no_alg = {k: v for k, v in header.items() if k != "alg"}
    assert refused(signed(no_alg, payload)) == "token algorithm not accepted"


def test_a_wrong_or_missing_kid_is_refused() -> None:
    """The key id must name a key of the keyring."""
    header, payload, _ = parts(mint(KEY, CLAIMS))
    for kid in ("nope", "", 7, None):
        assert refused(signed({**header, "kid": kid}, payload)) == "token signed by an unknown key"


def test_rotation_a_keyring_takes_every_key_it_holds() -> None:
    """Several public keys are taken at once, each chosen by the token's key id."""
    keyring = Keyring([KEY.public, OTHER.public])
    assert verify(keyring, mint(KEY, CLAIMS), NOW) == CLAIMS
    assert verify(keyring, mint(OTHER, CLAIMS), NOW) == CLAIMS


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "..",
        "\udcff.a.b",
        "é.a.b",
        "x" * 5000,
        "a=.b.c",
        "a b.c.d",
    ],
)
def test_garbage_is_refused_as_malformed(token: str) -> None:
    """Anything not three base64url parts of JSON is malformed, never an unhandled error."""
    assert "malformed" in refused(token)


def test_odd_json_is_refused_as_malformed() -> None:
    """Non-objects, duplicate claims, NaN and wrong claim types are refused, signed or not."""
    header, payload, _ = parts(mint(KEY, CLAIMS))
    good_header = part(header)
    assert "malformed" in refused(f"{part([1])}.{part(payload)}.AAAA")
    duplicate = b64(b'{"alg":"EdDSA","alg":"EdDSA","kid":"%s"}' % KEY.key_id.encode())
    assert "malformed" in refused(f"{duplicate}.{part(payload)}.AAAA")
    for change in (
        {"exp": "never"},
        {"exp": True},
        {"exp": 1.5e12},
        {"sub": 5},
        {"sub": ""},
        {"iat": None},
    ):
        assert "malformed" in refused(signed(header, {**payload, **change}))
    nan = b64(b'{"exp":NaN}')
    body = f"{good_header}.{nan}"
    assert "malformed" in refused(f"{body}.{b64(KEY.sign(body.encode()))}")
    assert "malformed" in refused(signed({**header, "crit": ["exp"]}, payload))
    assert "malformed" in refused(signed({**header, "typ": "at+jwt"}, payload))


def test_a_signature_has_one_spelling() -> None:
    """A signature whose unused trailing bits are set is refused (no two spellings of a token)."""
    token = mint(KEY, CLAIMS)
    header, payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) ^ 1]
    assert "malformed" in refused(f"{header}.{payload}.{signature[:-1]}{last}")


def test_bearer_takes_the_token_of_a_bearer_header() -> None:
    """The scheme is case-insensitive; anything else is refused."""
    assert bearer("Bearer abc") == "abc"
    assert bearer("  bearer   abc ") == "abc"
    for value in ("", "Bearer", "Bearer  ", "Basic abc", "abc"):
        with pytest.raises(TokenError):
            bearer(value)


def test_key_files_round_trip_and_refuse_other_keys() -> None:
    """A signing key survives PEM; public PEMs load (several per file); others are refused."""
    again = load_signing_key(KEY.pem())
    assert again.key_id == KEY.key_id
    both = load_public_keys(KEY.public.pem() + OTHER.public.pem())
    assert [k.key_id for k in both] == [KEY.key_id, OTHER.key_id]
    assert [k.key_id for k in load_public_keys(KEY.pem())] == [KEY.key_id]
    for bad in (b"", b"hello", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"):
        with pytest.raises(SigningError):
            load_public_keys(bad)
    with pytest.raises(SigningError):
        load_signing_key(b"not a key")


def test_key_ids_are_derived_from_the_key() -> None:
    """Two processes loading one key agree on its id; two keys differ."""
    assert load_public_keys(KEY.public.pem())[0].key_id == KEY.key_id != OTHER.key_id
    assert len(KEY.key_id) == 16


def test_the_module_has_no_clock_of_its_own() -> None:
    """Validity is judged only by the time passed in."""
    token = mint(KEY, CLAIMS)
    assert verify(Keyring([KEY.public]), token, NOW) == CLAIMS
    assert refused(token, NOW + 10**9) == "token expired"
    assert len(token) <= accesstoken.MAX_TOKEN_BYTES
