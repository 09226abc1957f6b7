"""Page sizes and page tokens (controlplane/paging.py)."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from controlplane.errors import InvalidArgument
from controlplane.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_token,
    encode_token,
    page_size,
)


def test_a_token_round_trips_to_its_uuid() -> None:
    """decode_token gives back the UUID encode_token was given; "" stays ""."""
    for _ in range(50):
        uuid = str(uuidlib.uuid4())
        token = encode_token(uuid)
        assert "=" not in token and decode_token(token) == uuid
    assert encode_token("") == "" and decode_token("") == ""


@pytest.mark.parametrize(
    "token", ["x", "====", "i1:" + str(uuidlib.UUID(int=1)), "\u00e9\u00e9\u00e9\u00e9", "a b"]
)
def test_anything_else_is_invalid_argument(token: str) -> None:
    """A string that is not a token of ours is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        decode_token(token)


def test_page_size_zero_is_the_default_and_bounds_are_checked() -> None:
    """0 means the default; 1 to the maximum pass; anything else is InvalidArgument."""
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(1) == 1 and page_size(MAX_PAGE_SIZE) == MAX_PAGE_SIZE
    for bad in (-1, MAX_PAGE_SIZE + 1):
        with pytest.raises(InvalidArgument):
            page_size(bad)
