"""Shared by the Lingo-BP CLI tests: queries files in, results files out, and the command line against the
scripted server."""

import json

# Fast retries, but a generous HTTP timeout: a healthy request to the local server must never time out, however
# loaded the machine (the timeout path has its own test, where the judge never answers).
FAST = ["--backoff", "0.01", "--max_retries", "1", "--timeout", "120", "--no_progress"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def lingo_args(server, inp, out, *extra):
    """`lingo_bp.main` arguments: the scripted server as policy and judge, fast retries, no progress bar."""
    spec = f"openai:{server.base_url}#scripted"
    return ["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(out), *FAST, *extra]
