"""The OpenAI-compatible server: requests, the chat template, thinking split, streaming and error codes."""

import json
import pathlib
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from eval_fakes import TINY_CHAT_CFG, random_params

from oyster_jax import convert
from oyster_jax.data.vocab import default_tokenizer_path
from oyster_jax.llm.local import LocalJaxBackend
from oyster_jax.serve import ChatService, make_server

TOKENIZER = default_tokenizer_path()
CFG = TINY_CHAT_CFG.replace(max_position_embeddings=512)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return convert.save_model(tmp_path_factory.mktemp("serve") / "tiny-chat", CFG, random_params(CFG))


@pytest.fixture(scope="module")
def server(ckpt):
    backend = LocalJaxBackend(str(ckpt), TOKENIZER, max_new_tokens=8)
    service = ChatService(backend, "tiny-chat", max_tokens_default=8)
    httpd = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    assert host == "127.0.0.1"
    yield f"http://{host}:{port}", service
    httpd.shutdown()
    backend.close()


def _request(url, body=None, method=None, raw=None, headers=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of Japan?"}]


def test_models_endpoint(server):
    url, _ = server
    status, body = _request(url + "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny-chat"]
    assert _request(url + "/v1/models/tiny-chat")[0] == 200
    assert _request(url + "/v1/models/other")[0] == 404


def test_chat_completion_is_greedy_and_applies_the_template(server):
    url, service = server
    status, body = _request(url + "/v1/chat/completions", {"model": "tiny-chat", "messages": HELLO, "max_tokens": 6})
    assert status == 200, body
    out = json.loads(body)
    choice = out["choices"][0]
    assert out["object"] == "chat.completion" and out["model"] == "tiny-chat"
    assert set(choice["message"]) == {"role", "content", "reasoning_content"}
    assert choice["finish_reason"] in ("stop", "length")
    # usage counts the templated prompt (ChatML with the assistant opener) and at most max_tokens new tokens
    from oyster_jax.core import chat

    prompt_text = chat.render_generation_prompt(HELLO)
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert out["usage"]["prompt_tokens"] == len(service.backend.tokenizer.encode(prompt_text).ids)
    assert 1 <= out["usage"]["completion_tokens"] <= 6
    # greedy by default: the same request gives the same reply, and the same as the backend directly
    again = json.loads(_request(url + "/v1/chat/completions", {"messages": HELLO, "max_tokens": 6})[1])
    assert again["choices"][0]["message"] == choice["message"]
    reasoning, content = service.backend.chat(HELLO, max_tokens=6)
    assert (reasoning, content) == (choice["message"]["reasoning_content"], choice["message"]["content"])


def test_thinking_is_returned_separately_and_stop_strings_cut(server):
    _, service = server
    tok = service.backend.tokenizer
    ids = tok.encode("<think>\nThe user wants a city.\n</think>\n\nTokyo.<|im_end|>").ids
    assert service.reply(ids) == ("The user wants a city.", "Tokyo.", "stop")
    ids = tok.encode("<think>\nstill thinking about it").ids
    assert service.reply(ids) == ("still thinking about it", "", "length")
    ids = tok.encode("Tokyo. Also Kyoto.").ids
    assert service.reply(ids, user_stops=(" Also",)) == ("", "Tokyo.", "stop")


def test_streaming_sends_chunks_and_done(server):
    url, _ = server
    status, body = _request(url + "/v1/chat/completions", {"messages": HELLO, "max_tokens": 4, "stream": True})
    assert status == 200
    lines = [ln[len("data: ") :] for ln in body.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(x) for x in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"messages": []}, 400, "messages"),
        ({}, 400, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content[0]"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0]"),
        ({"messages": HELLO, "temperature": -1}, 400, "temperature"),
        ({"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
        ({"messages": HELLO, "top_p": 0}, 400, "top_p"),
        ({"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 2.5}, 400, "max_tokens"),
        ({"messages": HELLO, "n": 2}, 400, "n"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": HELLO, "stream": "yes"}, 400, "stream"),
        ({"messages": HELLO, "tools": []}, 400, "tools"),
        ({"messages": HELLO, "model": "gpt-4"}, 404, "model"),
        ([1, 2], 400, None),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(server, body, status, param):
    url, _ = server
    code, text = _request(url + "/v1/chat/completions", body)
    assert code == status, text
    err = json.loads(text)["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_transport_errors(server):
    url, _ = server
    assert _request(url + "/v1/chat/completions", raw=b"{not json")[0] == 400
    assert _request(url + "/v1/chat/completions", raw="\u00e9".encode("latin-1"))[0] == 400
    assert _request(url + "/v1/chat/completions")[0] == 405  # GET
    assert _request(url + "/v1/nothing")[0] == 404
    assert _request(url + "/v1/nothing", {"messages": HELLO})[0] == 404
    assert _request(url + "/v1/models", {"x": 1})[0] == 405
    code, _ = _request(url + "/v1/chat/completions", raw=b"x" * 10, headers={"Content-Length": str(9 * 2**20)})
    assert code == 413
    too_long = [{"role": "user", "content": "word " * 2000}]  # beyond the model's 512 positions
    code, text = _request(url + "/v1/chat/completions", {"messages": too_long})
    assert code == 400 and json.loads(text)["error"]["code"] == "context_length_exceeded"


def test_cli_binds_localhost_and_serves_models(ckpt):
    proc = subprocess.Popen(
        [sys.executable, "-m", "oyster_jax.serve", "--ckpt", str(ckpt), "--tokenizer", TOKENIZER, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    try:
        url = None
        for line in proc.stdout:
            if " at http://" in line:
                url = line.split(" at ", 1)[1].split()[0]
                break
        assert url and url.startswith("http://127.0.0.1:"), url
        status, body = _request(url + "/models")
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-chat"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
