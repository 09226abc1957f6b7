"""What a caller is told of a control-plane error: its message, bounded."""

from __future__ import annotations

from controlplane.errors import MAX_MESSAGE, NotFound, message_of


def test_a_short_message_is_told_as_it_is() -> None:
    """A message within the bound reaches the caller unchanged."""
    assert message_of(NotFound("instance vm1 not found")) == "instance vm1 not found"


def test_a_long_message_is_cut_and_marked() -> None:
    """A message quoting a huge input is cut to MAX_MESSAGE characters, ending '...'."""
    told = message_of(NotFound(f"instance {'x' * 70000} not found"))
    assert len(told) == MAX_MESSAGE and told.endswith("...")


def test_an_empty_message_names_the_error() -> None:
    """An error raised without a message is told by its class name."""
    assert message_of(NotFound()) == "NotFound"
