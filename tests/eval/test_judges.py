"""Judges: word matching with synonyms, and the chat judge against a local fake endpoint."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from sauce_jax.eval.judges import (
    ChatJudge,
    Judge,
    JudgeError,
    VerdictCache,
    WordMatchJudge,
    make_judge,
    parse_verdict,
    plural_forms,
)
from sauce_jax.errors import ConfigError, InputError, SauceError

# --------------------------------------------------------------------------------------------
# WordMatchJudge


def test_whole_words_case_and_plurals():
    judge = WordMatchJudge()
    answers = ["Two CATS on a mat.", "the cat's tail", "a category of things", "concatenate", "Cat", "", "a dog"]
    assert judge.judge("cat", answers).tolist() == [True, True, False, False, True, False, False]
    assert judge.judge("box", ["three boxes", "a boxer"]).tolist() == [True, False]
    assert judge.judge("berry", ["Berries!", "a berry-like fruit", "strawberry"]).tolist() == [True, True, False]
    assert judge.judge("leaf", ["autumn leaves", "leaflet"]).tolist() == [True, False]
    assert judge.judge("knife", ["two knives"]).tolist() == [True]
    assert judge.judge("day", ["two days", "dies"]).tolist() == [True, False]  # vowel + y: no "ies"
    assert set(plural_forms("party")) == {"party", "partys", "partyes", "parties"}


def test_multi_word_terms_and_folder_names():
    judge = WordMatchJudge({"ice_rink": ["skating rink"]})
    answers = ["An ice rink at night", "an ice-rink", "ICE  RINKS", "a skating rink", "ice and a rink", "a rink",
               "the icerink"]
    assert judge.judge("ice_rink", answers).tolist() == [True, True, True, True, False, False, False]
    assert judge.terms("Ice_Rink") == ("Ice Rink", "skating rink")
    # Non-ASCII words are whole words too.
    assert WordMatchJudge().judge("sí", ["Sí.", "así"]).tolist() == [True, False]


def test_synonyms_from_dict_json_and_per_call(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({"cat": ["kitten", "feline"], "golden_retriever": ["retriever"]}))
    for judge in (WordMatchJudge.from_json(path), WordMatchJudge({"Cat": ["kitten", "feline"]})):
        assert judge.judge("cat", ["a kitten", "feline grace", "a dog"]).tolist() == [True, True, False]
    judge = WordMatchJudge(path)
    assert judge.judge("golden_retriever", ["a golden retriever", "two retrievers", "gold"]).tolist() == [
        True, True, False]
    # Synonyms given per call replace the table's.
    assert judge.judge("cat", ["a kitten", "a tabby"], synonyms=["tabby"]).tolist() == [False, True]
    out = judge.judge("cat", [])
    assert out.dtype == bool and out.shape == (0,)


def test_word_judge_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        WordMatchJudge(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match="bad.json.*not valid JSON"):
        WordMatchJudge(tmp_path / "bad.json")
    (tmp_path / "str.json").write_text(json.dumps({"cat": "kitten"}))
    with pytest.raises(InputError, match="str.json.*synonyms of 'cat' must be a list"):
        WordMatchJudge(tmp_path / "str.json")
    (tmp_path / "list.json").write_text(json.dumps(["cat"]))
    with pytest.raises(InputError, match="must map concept"):
        WordMatchJudge(tmp_path / "list.json")
    with pytest.raises(InputError, match="synonym table: synonyms of 'dog' include ' '"):
        WordMatchJudge({"dog": ["puppy", " "]})
    with pytest.raises(InputError, match="one string"):
        WordMatchJudge().judge("cat", "a cat")
    with pytest.raises(InputError, match="answer 1 is int"):
        WordMatchJudge().judge("cat", ["a cat", 3])
    with pytest.raises(InputError, match="empty"):
        WordMatchJudge().judge("  ", ["a cat"])


def test_both_judges_are_judges(tmp_path):
    assert isinstance(WordMatchJudge(), Judge)
    chat = ChatJudge("m", base_url="http://127.0.0.1:9/v1", cache=False)
    assert isinstance(chat, Judge) and chat.url == "http://127.0.0.1:9/v1/chat/completions"
    assert isinstance(make_judge("words", {"cat": ["kitten"]}), WordMatchJudge)
    assert isinstance(make_judge("chat", model="m", base_url="http://h/v1", cache=False), ChatJudge)
    with pytest.raises(ConfigError, match="'oracle'"):
        make_judge("oracle")
    with pytest.raises(ConfigError, match="no endpoint options"):
        make_judge("words", model="m")


# --------------------------------------------------------------------------------------------
# parse_verdict


@pytest.mark.parametrize("text,verdict", [
    ("yes", True), ("No", False), ("Yes.", True), ("**No**", False), (" YES\n", True), ('"no"', False),
    ("no - the description does not mention it", False), ("Yes, it mentions a cat; no doubt.", True),
    ("Answer: yes", True), ("Verdict: No.", False), ("<think>yes? or no?</think>\nyes", True),
    ("<think>yes", True),  # an unclosed reasoning block is plain text: one "yes" in it
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


@pytest.mark.parametrize("text", ["", "maybe", "yesterday nothing", "It could be yes or no."])
def test_parse_verdict_refuses_non_verdicts(text):
    with pytest.raises(JudgeError, match="not a yes/no verdict"):
        parse_verdict(text)


# --------------------------------------------------------------------------------------------
# ChatJudge against a fake OpenAI-compatible server


class FakeChat:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1. Each request takes the next
    scripted action, else `rule(user message)`, by default "Yes." when it contains "purr", else "No"."""

    def __init__(self, rule=None):
        self.rule = rule or (lambda text: "Yes." if "purr" in text else "No")
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(body)})
                    action = fake.script.popleft() if fake.script else ("auto",)
                kind = action[0]
                if kind == "auto":
                    return self.reply(fake.rule(json.loads(body)["messages"][0]["content"]))
                if kind == "reply":
                    return self.reply(action[1])
                if kind == "raw":
                    return self.send(200, action[1])
                if kind == "status":
                    headers = {"Retry-After": action[2]} if len(action) > 2 else {}
                    return self.send(action[1], b'{"error": {"message": "scripted"}}', headers)
                if kind == "sleep":
                    time.sleep(action[1])
                    return self.reply("yes")
                if kind == "drop":
                    self.close_connection = True
                    return None
                raise AssertionError(action)

            def reply(self, text):
                payload = {"id": "x", "object": "chat.completion", "model": "fake",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop"}]}
                self.send(200, json.dumps(payload).encode())

            def send(self, code, data, headers=None):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeChat()
    yield fake
    fake.close()


@pytest.fixture
def naps():
    """A recorded, instant sleep for the retry backoff."""
    waits: list[float] = []
    return waits


def judge_at(server, tmp_path, naps, **kw):
    options = dict(model="judge-model", base_url=server.url, api_key="secret", cache=tmp_path / "cache.jsonl",
                   timeout=5.0, retries=3, backoff=0.01, workers=1, sleep=naps.append)
    options.update(kw)
    return ChatJudge(**options)


def test_chat_judge_asks_the_paper_question(server, tmp_path, naps):
    judge = judge_at(server, tmp_path, naps, synonyms={"cat": ["kitten"]})
    out = judge.judge("cat", ["A cat that purrs on a mat.", "A dog in a park."])
    assert out.dtype == bool and out.tolist() == [True, False]
    assert server.count == 2 and judge.requests == 2 and naps == []
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer secret"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 16
    prompt = body["messages"][0]["content"]
    assert '"cat"' in prompt and '"kitten"' in prompt and "A cat that purrs on a mat." in prompt
    assert "yes or no" in prompt


def test_chat_judge_reads_the_environment(server, tmp_path, monkeypatch, naps):
    monkeypatch.setenv("SAUCE_JUDGE_BASE_URL", server.url + "/")
    monkeypatch.setenv("SAUCE_JUDGE_MODEL", "env-model")
    monkeypatch.delenv("SAUCE_JUDGE_API_KEY", raising=False)
    monkeypatch.setenv("SAUCE_JUDGE_CACHE", str(tmp_path / "env-cache.jsonl"))
    judge = ChatJudge(sleep=naps.append)
    assert judge.judge("cat", ["purr"]).tolist() == [True]
    assert server.requests[-1]["body"]["model"] == "env-model"
    assert "Authorization" not in server.requests[-1]["headers"]  # no key: none sent (local servers)
    assert (tmp_path / "env-cache.jsonl").is_file()
    # Arguments win over the environment.
    judge = ChatJudge("arg-model", api_key="k", cache=False)
    judge.judge("cat", ["purr"])
    assert server.requests[-1]["body"]["model"] == "arg-model"
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer k"


def test_chat_judge_configuration_errors(monkeypatch, tmp_path):
    for name in ("SAUCE_JUDGE_BASE_URL", "SAUCE_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="SAUCE_JUDGE_BASE_URL"):
        ChatJudge("m", cache=False)
    with pytest.raises(ConfigError, match="SAUCE_JUDGE_MODEL"):
        ChatJudge(base_url="http://x/v1", cache=False)
    with pytest.raises(ConfigError, match="http"):
        ChatJudge("m", base_url="localhost:8000", cache=False)
    for bad in (dict(timeout=0), dict(retries=-1), dict(workers=0), dict(backoff=-1.0),
                dict(instruction="no placeholders"), dict(instruction="{concept} {answer} {other}")):
        with pytest.raises(ConfigError):
            ChatJudge("m", base_url="http://x/v1", cache=False, **bad)


def test_retries_on_5xx_429_and_dropped_connections(server, tmp_path, naps):
    server.script.extend([("status", 500), ("status", 429, "0.5"), ("drop",), ("reply", "Yes")])
    judge = judge_at(server, tmp_path, naps)
    assert judge.judge("cat", ["a cat"]).tolist() == [True]
    assert server.count == 4
    # Exponential backoff 0.01, 0.02, 0.04; the 429's Retry-After (0.5 s) wins over 0.02.
    assert naps == [0.01, 0.5, 0.04]


def test_exhausted_retries_raise(server, tmp_path, naps):
    server.script.extend([("status", 503)] * 10)
    judge = judge_at(server, tmp_path, naps, retries=2)
    with pytest.raises(JudgeError, match=r"failed after 3 attempts.*HTTP 503") as info:
        judge.judge("cat", ["a cat"])
    assert isinstance(info.value, SauceError) and server.url in str(info.value)
    assert server.count == 3 and len(naps) == 2
    assert len(VerdictCache(tmp_path / "cache.jsonl")) == 0  # no verdict, nothing cached


def test_timeouts_are_retried_then_raise(server, tmp_path, naps):
    server.script.extend([("sleep", 1.5), ("reply", "no")])
    judge = judge_at(server, tmp_path, naps, timeout=0.25)
    start = time.perf_counter()
    assert judge.judge("cat", ["a cat"]).tolist() == [False]  # the second attempt's verdict
    assert time.perf_counter() - start < 1.4  # did not wait for the slow reply
    assert server.count == 2
    server.script.extend([("sleep", 1.5)] * 2)
    judge = judge_at(server, tmp_path, naps, timeout=0.25, retries=1, cache=False)
    with pytest.raises(JudgeError, match=r"failed after 2 attempts \(timeout 0.25 s\).*(timed out|Timeout)"):
        judge.judge("cat", ["another cat"])
    assert server.count == 4


def test_connection_refused_is_retried_then_raises(tmp_path, naps):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = ChatJudge("m", base_url=f"http://127.0.0.1:{port}/v1", cache=False, retries=2, backoff=0.01,
                      timeout=2.0, sleep=naps.append)
    with pytest.raises(JudgeError, match="failed after 3 attempts.*cannot connect"):
        judge.judge("cat", ["a cat"])
    assert judge.requests == 3 and naps == [0.01, 0.02]


@pytest.mark.parametrize("action,match", [
    (("raw", b"<html>oops</html>"), "malformed response"),
    (("raw", b'{"choices": []}'), "malformed response.*IndexError"),
    (("raw", b'{"choices": [{"message": {"content": null}}]}'), "no text content"),
    (("reply", "Perhaps."), "not a yes/no verdict: 'Perhaps.'"),
    (("status", 401), "refused the request.*HTTP 401"),
    (("status", 404), "refused the request.*HTTP 404"),
])
def test_malformed_responses_and_client_errors_raise_at_once(server, tmp_path, naps, action, match):
    server.script.append(action)
    judge = judge_at(server, tmp_path, naps)
    with pytest.raises(JudgeError, match=match):
        judge.judge("cat", ["a cat"])
    assert server.count == 1 and naps == []  # not retried


def test_cache_hits_send_no_request(server, tmp_path, naps):
    answers = ["it purrs", "a dog", "it purrs", "a bird"]
    first = judge_at(server, tmp_path, naps).judge("cat", answers)
    assert first.tolist() == [True, False, True, False]
    assert server.count == 3  # the repeated answer was asked once
    again = judge_at(server, tmp_path, naps)  # a new judge (new process) on the same file
    assert again.judge("cat", answers).tolist() == first.tolist()
    assert server.count == 3 and again.requests == 0
    # The key covers model, concept, synonyms and instruction: each change asks again.
    judge_at(server, tmp_path, naps, model="other").judge("cat", ["a dog"])
    judge_at(server, tmp_path, naps).judge("dog", ["a dog"])
    judge_at(server, tmp_path, naps).judge("cat", ["a dog"], synonyms=["kitten"])
    judge_at(server, tmp_path, naps, instruction="{concept}? {answer}").judge("cat", ["a dog"])
    assert server.count == 7
    judge_at(server, tmp_path, naps).judge("cat", ["a dog"])
    assert server.count == 7
    rows = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and {"key", "verdict", "model", "concept", "answer"} <= set(rows[0])


def test_cache_survives_a_torn_write(server, tmp_path, naps):
    judge_at(server, tmp_path, naps).judge("cat", ["it purrs", "a dog"])
    path = tmp_path / "cache.jsonl"
    with open(path, "a") as f:
        f.write('{"key": "abc", "verd')  # a crash mid-write
    cache = VerdictCache(path)
    assert len(cache) == 2 and cache.skipped == 1
    judge = judge_at(server, tmp_path, naps, cache=cache)
    assert judge.judge("cat", ["it purrs", "a bird"]).tolist() == [True, False]
    assert server.count == 3  # only the new answer was asked
    reread = VerdictCache(path)
    assert len(reread) == 3 and reread.skipped == 1
    assert path.read_text().endswith("\n")


def test_concurrent_requests_keep_the_order(server, tmp_path, naps):
    answers = [f"answer {i}" + (" purr" if i % 3 == 0 else "") for i in range(9)]
    judge = judge_at(server, tmp_path, naps, workers=4)
    assert judge.judge("cat", answers).tolist() == [i % 3 == 0 for i in range(9)]
    assert server.count == 9
    assert len(VerdictCache(tmp_path / "cache.jsonl")) == 9
    np.testing.assert_array_equal(judge_at(server, tmp_path, naps).judge("cat", answers[::-1]),
                                  [i % 3 == 0 for i in range(9)][::-1])
    assert server.count == 9
