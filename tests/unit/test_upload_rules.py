"""Where uploads may land and what counts as an image."""

from __future__ import annotations

import pytest
from support import FIXTURES

from devbox_service.devboxes.uploads import (
    is_image,
    safe_filename,
    safe_upload_dir,
)
from devbox_service.errors import InvalidInput


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/tmp/codex-uploads"),  # the API's default (answered as the upload's path)
        ("", "/tmp/codex-uploads"),
        ("/tmp", "/tmp"),
        ("/tmp/a/b", "/tmp/a/b"),
        ("/tmp/a//b/", "/tmp/a/b"),
        ("/tmp/./a", "/tmp/a"),
    ],
)
def test_directories_under_tmp_are_accepted_and_normalised(
    given: str | None, expected: str
) -> None:
    assert safe_upload_dir(given) == expected


@pytest.mark.parametrize(
    "given", ["/tmp/../etc", "/tmp/a/../../etc", "tmp/a", "/etc", "/tmpx", "/", "/tmp/\x00a"]
)
def test_directories_outside_tmp_or_with_dotdot_are_refused(given: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        safe_upload_dir(given)
    assert refused.value.field == "dest_dir"


@pytest.mark.parametrize("name", ["notes.txt", " spaced.txt ", ".hidden", "a..b"])
def test_plain_file_names_are_kept(name: str) -> None:
    assert safe_filename(name) == name.strip()


@pytest.mark.parametrize("name", ["", "  ", ".", "..", "a/b", "..\\x", "a\x00b"])
def test_names_with_paths_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        safe_filename(name)


def test_an_image_needs_both_the_type_and_the_signature() -> None:
    png = FIXTURES.joinpath("pixel.png").read_bytes()
    assert is_image("image/png", png)
    assert not is_image("text/plain", png)
    assert not is_image("image/png", b"plain text")
    assert is_image("image/jpeg", b"\xff\xd8\xff\xe0rest")
