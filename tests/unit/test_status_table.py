"""The status table: every error the control plane reports has one HTTP status."""

from __future__ import annotations

from common.status import HTTP_STATUS, http_status
from controlplane.errors import STATUS, MiniCloudError, NotFound, PermissionDenied, status_of


def test_every_control_plane_error_code_has_an_http_status() -> None:
    """Each gRPC code the error tree names is in the shared HTTP table."""
    assert set(STATUS.values()) <= set(HTTP_STATUS)


def test_an_error_maps_to_its_code_and_http_status() -> None:
    """status_of gives the gRPC code name and the table's HTTP status."""
    assert status_of(NotFound("x")) == ("NOT_FOUND", 404)
    assert status_of(PermissionDenied("x")) == ("PERMISSION_DENIED", 401)


def test_unmapped_errors_and_codes_are_internal() -> None:
    """An error class outside the table is INTERNAL/500, and so is an unknown code."""
    assert status_of(MiniCloudError("x")) == ("INTERNAL", 500)
    assert http_status("DATA_LOSS") == 500
    assert http_status("UNIMPLEMENTED") == 501
