"""`python -m kanlib slides` and `python -m kanlib book` refuse an unusable output folder before any work."""
from __future__ import annotations

import pytest

from kanlib.__main__ import main
from kanlib.book import site, slides


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_slides_refuse_an_output_folder_that_is_a_file(a_file, monkeypatch, capsys):
    def not_copied(out_dir):
        raise AssertionError("assets copied although the decks could not be written")

    monkeypatch.setattr(slides, "copy_slide_assets", not_copied)
    assert main(["slides", "--output-dir", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"got {a_file}, which exists and is not a folder" in err, err
    with pytest.raises(ValueError, match="cannot be created"):
        slides.write_decks([], a_file / "sub")


def test_book_refuses_a_build_folder_that_is_a_file(a_file, monkeypatch, capsys):
    def not_staged(*args, **kwargs):
        raise AssertionError("staged although the site could not be written")

    monkeypatch.setattr(site, "stage", not_staged)
    assert main(["book", "--notebooks", "notebooks", "--build-dir", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"got {a_file}, which exists and is not a folder" in err, err
