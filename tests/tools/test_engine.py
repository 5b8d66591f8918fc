"""The glue around one run of an external tool: version first, a work folder, missing outputs and
unreadable output as ToolOutputError naming the input, nothing left behind on failure."""

from __future__ import annotations

import pytest

from emlive.tools import ExternalTool, ToolOutputError, ToolSpec, ToolVersionError, Version, find_version
from .fakes import calls, fake_tool


def _parse_version(text: str) -> Version | None:
    return find_version(text, r"demo (\d+\.\d+\.\d+)")


DEMO = ExternalTool("demo", "demo", _parse_version, (Version(1, 0, 0), Version(2, 0, 0)), label="Demo")


def _source(tmp_path):
    source = tmp_path / "raw" / "exposure_7.mrc"
    source.parent.mkdir()
    source.write_bytes(b"")
    return source


def test_a_run_works_in_a_temporary_folder_inside_out_dir_that_is_removed(tmp_path):
    tool = fake_tool(tmp_path / "demo", version="demo 1.2.3\n", body="Path('result.txt').write_text('42')\n")
    out = tmp_path / "out"
    with DEMO.run(_source(tmp_path), out, spec=ToolSpec(executable=str(tool))) as run:
        assert run.version == Version(1, 2, 3) and run.stem == "exposure_7"
        assert run.work.parent == out.resolve() and run.work.name.startswith(".exposure_7.tmp-demo-")
        run.call(["demo", "--in", str(run.source)])
        (result,) = run.expect("result.txt")
        assert result.read_text() == "42"
    assert list(out.iterdir()) == []
    (call,) = calls(tool)
    assert call["cwd"] == str(run.work)


def test_an_unsupported_version_is_refused_before_anything_is_written(tmp_path):
    tool = fake_tool(tmp_path / "demo", version="demo 2.0.0\n", body="")
    with pytest.raises(ToolVersionError, match="Demo 2.0.0 is not supported"):
        with DEMO.run(_source(tmp_path), tmp_path / "out", spec=ToolSpec(executable=str(tool))):
            pytest.fail("the run must not start")
    assert not (tmp_path / "out").exists()


def test_missing_outputs_are_named_with_the_tools_last_words(tmp_path):
    tool = fake_tool(tmp_path / "demo", version="demo 1.0.0\n", body="print('disk quota exceeded', file=sys.stderr)\n")
    source = _source(tmp_path)
    with pytest.raises(ToolOutputError, match="exposure_7.mrc: Demo ended without writing a.txt, b.txt") as caught:
        with DEMO.run(source, tmp_path / "out", spec=ToolSpec(executable=str(tool))) as run:
            run.call(["demo"])
            run.expect("a.txt", "b.txt")
    assert caught.value.stderr_tail == "disk quota exceeded" and caught.value.exit_code == 0
    assert str(source) in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == [], "the work folder is removed on failure"


def test_a_parser_error_becomes_an_output_error_with_the_parsed_texts_tail(tmp_path):
    tool = fake_tool(tmp_path / "demo", version="demo 1.0.0\n", body="print('garbage')\n")
    with pytest.raises(ToolOutputError, match="cannot read Demo's results r.txt: no numbers") as caught:
        with DEMO.run(_source(tmp_path), tmp_path / "out", spec=ToolSpec(executable=str(tool))) as run:
            run.call(["demo"])
            with run.reading("results r.txt", "line 1\nline 2"):
                raise ValueError("no numbers")
    assert caught.value.stderr_tail == "line 1\nline 2"
    assert caught.value.argv == (str(tool),)
