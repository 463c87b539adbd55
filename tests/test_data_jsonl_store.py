"""The one resumable JSONL store: append, resume by id, skip finished, retry failed, repair a killed writer."""

import json

import pytest

from oyster_jax.data.jsonl_store import JsonlError, JsonlStore

ITEMS = [{"id": "a"}, {"id": "b"}, {"id": 3}, {"id": "d"}]


def _store(tmp_path, text=None, **kw):
    path = tmp_path / "results.jsonl"
    if text is not None:
        path.write_bytes(text.encode("utf-8"))
    return JsonlStore(path, **kw)


def test_append_load_and_pending(tmp_path):
    store = _store(tmp_path, fsync=True)
    assert store.load() == {} and store.pending(ITEMS) == ITEMS  # no file yet
    store.append({"id": "a", "value": 1})
    store.append({"id": "b", "error": "target: timed out"})  # failed: run again on resume
    store.extend([{"id": 3, "value": 3}, {"id": "b", "value": 2}])  # the retry's newer line wins
    store.append({"id": "d", "error": "judge: HTTP 500"})
    assert store.path.read_text("utf-8").count("\n") == 5
    loaded = JsonlStore(store.path).load()
    assert loaded == {"a": {"id": "a", "value": 1}, "b": {"id": "b", "value": 2}, "3": {"id": 3, "value": 3},
                      "d": {"id": "d", "error": "judge: HTTP 500"}}  # fmt: skip
    assert JsonlStore(store.path).pending(ITEMS) == [{"id": "d"}]
    # another notion of finished (e.g. Lingo-BP: any line is a finished query)
    assert JsonlStore(store.path).pending(ITEMS, finished=lambda r: True) == []
    assert [r["id"] for r in JsonlStore(store.path).records()] == ["a", "b", 3, "b", "d"]  # every line, in order


def test_a_torn_last_line_is_dropped_and_the_next_append_is_clean(tmp_path):
    good = json.dumps({"id": "a", "v": "ü"}, ensure_ascii=False) + "\n"
    store = _store(tmp_path, good + '{"id": "b", "v": "ha')
    assert JsonlStore(store.path).load(repair=False) == {"a": {"id": "a", "v": "ü"}}
    assert store.path.read_text("utf-8").endswith('"ha')  # read-only load leaves the file alone
    store.append({"id": "c"})  # an append first repairs the file it appends to
    assert store.path.read_text("utf-8") == good + '{"id": "c"}\n'


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    store = _store(tmp_path, '{"id": "a"}\n{"id": "b"}')
    assert set(store.load()) == {"a", "b"}
    assert store.path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    store.append({"id": "c"})
    assert [r["id"] for r in JsonlStore(store.path).records()] == ["a", "b", "c"]


def test_numbered_gives_each_record_its_line(tmp_path):
    store = _store(tmp_path, '{"id": "a"}\n\n{"id": "b"}\n{"id": "a", "v": 2}\n{"id": "c", "v')
    assert JsonlStore(store.path).numbered(repair=False) == [
        (1, {"id": "a"}),
        (3, {"id": "b"}),
        (4, {"id": "a", "v": 2}),
    ]
    assert store.path.read_text().endswith('"v')  # read-only


def test_a_torn_multibyte_character_is_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + '{"id": "b", "v": "中'.encode()[:-1])
    assert set(JsonlStore(path).load()) == {"a"} and path.read_bytes() == b'{"id": "a"}\n'


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('{"id": "a"}\n{"id": "b", \n{"id": "c"}\n', 2, "not a JSON record"),
        ('{"id": "a"}\n[1, 2]\n', 2, "expected a JSON object"),
        ('{"x": 1}\n', 1, "field 'id'"),
        ('{"id": true}\n', 1, "field 'id'"),
        ('{"id": "a"}\n\n{"id": null}', 3, "field 'id'"),  # a complete last line is checked like the others
    ],
)
def test_bad_lines_name_the_line_and_leave_the_file(tmp_path, text, line, needle):
    store = _store(tmp_path, text)
    with pytest.raises(JsonlError, match=needle) as e:
        store.load()
    assert str(e.value).startswith(f"{store.path}:{line}: ") and e.value.line == line
    assert store.path.read_text() == text
    with pytest.raises(JsonlError):
        store.append({"id": "z"})  # never appended behind a damaged file
    assert store.path.read_text() == text


def test_rewrite_is_atomic_and_replaces_everything(tmp_path):
    store = _store(tmp_path, '{"id": "a"}\n{"id": "b"}\n{"id": "c", "v": 1')
    store.rewrite([{"id": "b"}])
    assert store.path.read_text() == '{"id": "b"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]  # no temporary file left behind
    store.append({"id": "c"})
    assert list(store.load()) == ["b", "c"]
