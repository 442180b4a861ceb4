"""``hitl replay`` reads a stream strictly: a line that is not a labelled exchange is
refused naming the file, the line and what is wrong, before anything is stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.app.replay import Recorded, recorded
from middleware.cli.main import main


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[1, 2]", "a line must be a JSON object, not list"),
        ('"reply"', "a line must be a JSON object, not str"),
        ('{"reply": "r"}', "no 'label'"),
        ('{"label": 1}', "no 'reply'"),
        ('{"reply": "r", "label": 5}', "'label' must be 0 or 1, not 5"),
        ('{"reply": "r", "label": 0.7}', "'label' must be 0 or 1, not 0.7"),
        ('{"reply": "r", "label": "1"}', "'label' must be 0 or 1, not \"1\""),
        ('{"reply": "r", "label": null}', "'label' must be 0 or 1, not null"),
        ('{"reply": null, "label": 1}', "'reply' must be a string"),
        ('{"reply": ["r"], "label": 1}', "'reply' must be a string"),
        ('{"reply": "r", "label": 1, "question": 3}', "'question' must be a string"),
        ('{"reply": "r", "label": 1, "history": "hi"}', "'history' must be an array"),
        ('{"reply": "r", "label": 1, "history": ["hi"]}', "'history' must be an array"),
        ('{"reply": "r", "label": 1, "meta": [1]}', "'meta' must be an object"),
        ("not json", "not a labelled exchange (not JSON: "),
    ],
)
def test_a_bad_line_is_refused_naming_the_line_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, says: str
) -> None:
    stream = tmp_path / "stream.jsonl"
    stream.write_text('{"question": "q", "reply": "fine", "label": 1}\n\n' + line + "\n")
    db = tmp_path / "hitl.db"
    assert main(["replay", str(stream), "--store", f"sqlite:///{db}", "--quiet"], environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hitl: {stream}:3: not a labelled exchange (")
    assert says in err
    assert '"reply" (a string) and "label" (0 or 1)' in err
    assert "Traceback" not in err
    assert not db.exists()  # the whole stream is read before anything is stored


def test_a_good_row_reads_as_the_data_readme_describes() -> None:
    row = {
        "question": "where is it?",
        "history": [{"role": "bot", "text": "hello"}, {"role": "user", "text": "hi"}],
        "reply": "on its way",
        "label": True,
        "meta": {"user": 42},
    }
    assert recorded(row) == Recorded(
        "where is it?", (("bot", "hello"), ("user", "hi")), "on its way", 1, "42"
    )
    bare = recorded({"reply": "", "label": 0, "question": None, "history": None})
    assert bare == Recorded("", (), "", 0, None)
