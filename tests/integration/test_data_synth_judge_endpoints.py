"""`flywheel data synth|judge|eval` against real endpoints: the gateway (its own process, real stack) in front of
bench/upstream_stub.py, and, where a verdict must be read, a small fake judge served here over HTTP.

The stub answers "echo model=<version> messages=<n> last=<the last message's first 60 characters>": the checks on
its answers are about structure, counts, resuming, retries (the gateway's own 429 and Retry-After) and failures. It
writes no JSON verdict, so through the gateway the judge must count invalid verdicts. The fake judge prefers the
longer answer (always the first place when the question says "biased"), wraps its JSON in chatter, fails a "flaky"
question once with 503, answers as models "long" and "short", and records its prompts to show the swapped positions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from click.testing import CliRunner

from deploy.ports import free_ports
from retrain.data.cli import eval_command
from retrain.data.judge import judge_command
from retrain.data.synth import OPERATIONS, synth_command
from retrain.data.text import shingles
from schemas.events import DPOPair
from tests.conftest import settings_env
from tests.integration.gateway_helpers import ROOT, create_keys, run_gateway, stop, wait_http
from tests.integration.streams_worker import Collector

pytestmark = pytest.mark.integration

SEEDS = [
    "How do I return a pair of shoes I bought online?",
    "What is the warranty period for the steel kettle?",
    "Can I change my delivery address after ordering?",
    "请问退货以后多久能收到退款？",
]
ECHO_ANSWER = "echo model=tiny messages=1 last="
PNG = b"\x89PNG\r\n\x1a\n"
ROUND_TRIP = re.compile(r"requests \(retries\)\s*│\s*(\d+) \((\d+)\)")


@pytest.fixture(scope="module")
def stub_url():
    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "bench.upstream_stub", "--port", str(port)], cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def gateway(stack, stub_url, tmp_path_factory):
    env = {
        **os.environ,
        **settings_env(stack),
        "FLYWHEEL_GATEWAY_UPSTREAMS": stub_url,
        "FLYWHEEL_GATEWAY_DISCOVER_WORKERS": "false",
        "FLYWHEEL_LOG_LEVEL": "WARNING",
    }
    with run_gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log") as gw:
        yield {**gw, "v1": gw["url"] + "/v1"}


class FakeEndpoint(BaseHTTPRequestHandler):
    """POST /v1/chat/completions as described in the module docstring; `server.asked` keeps the judge's prompts."""

    PROMPT = re.compile(r"\[Question\]\n(.*?)\n\n\[Answer A\]\n(.*?)\n\[End.*?\[Answer B\]\n(.*?)\n\[End", re.S)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        judged = self.PROMPT.search(text)
        if judged is None:
            answer = f"A long and careful answer to {text}, with every detail." if body["model"] == "long" else "Short."
            return self.reply(200, answer)
        question, first, second = judged.groups()
        with self.server.lock:
            self.server.asked.append((question, first, second))
            if "flaky" in question and question not in self.server.failed:
                self.server.failed.add(question)
                return self.reply(503, "busy", {"Retry-After": "0"})
        winner = "A" if "biased" in question or len(first) > len(second) else "B"
        verdict = json.dumps({"winner": winner, "reason": f"answer {winner} says more"})
        self.reply(200, f"Here is my verdict:\n```json\n{verdict}\n```\nThanks.")

    def reply(self, status: int, text: str, headers: dict | None = None) -> None:
        message = {"role": "assistant", "content": text}
        body = {"object": "chat.completion", "id": "fake", "created": 0, "model": "fake"}
        body["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        payload = json.dumps(body if status == 200 else {"error": {"message": text}}).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    server.asked, server.failed, server.lock = [], set(), threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"v1": f"http://127.0.0.1:{server.server_port}/v1", "asked": server.asked}
    finally:
        server.shutdown()
        server.server_close()


def run(command, args: list[str], env: dict) -> tuple[int, str]:
    result = CliRunner().invoke(command, [str(a) for a in args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def requests_and_retries(output: str) -> tuple[int, int]:
    requests, retries = ROUND_TRIP.search(output).groups()
    return int(requests), int(retries)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


# -- synth ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options",
    [
        ("self-instruct", ["--count", "5", "--rounds", "3", "--per-request", "3", "--examples", "2"]),
        ("evol", ["--rounds", "2"]),
        ("paraphrase", ["--n", "2"]),
        ("back-translate", []),
    ],
)
def test_synth_writes_new_answered_questions(stack, gateway, tmp_path, method, options):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": q, "answer": "-"}) + "\n" for q in SEEDS), encoding="utf-8")
    out, args = tmp_path / "synth.jsonl", ["--method", method, "--seeds", seeds, "--url", gateway["v1"], *options]
    code, output = run(synth_command, [*args, "--out", out], settings_env(stack))  # the key: <data_dir>/dev-api-key
    assert code == 0, output
    records = read_jsonl(out)
    assert 1 <= len(records) <= {"self-instruct": 5, "evol": 8, "paraphrase": 8, "back-translate": 4}[method]
    assert all(r["source"] == f"synth:{method}" and r["seed"] in SEEDS for r in records)
    assert all(r["answer"].startswith(ECHO_ANSWER) for r in records)  # answered through the gateway
    assert len({r["id"] for r in records}) == len(records)
    # no near-duplicates among questions and seeds (0.9, not 0.8: MinHash estimates Jaccard, near 0.8 either way)
    texts = [r["question"] for r in records] + SEEDS
    assert all(jaccard(a, b) < 0.9 for i, a in enumerate(texts) for b in texts[i + 1 :])
    if method == "evol":
        assert {r["operation"] for r in records} <= set(OPERATIONS)
    if method == "back-translate":
        assert {(r["seed"] == SEEDS[3], r["pivot"]) for r in records} <= {(False, "Chinese"), (True, "English")}
    requests, retries = requests_and_retries(output)
    assert requests > len(records) and retries == 0  # a question asked (or rewritten), then answered


def test_a_rerun_appends_only_what_is_missing(stack, gateway, tmp_path):
    seeds, out = tmp_path / "seeds.txt", tmp_path / "synth.jsonl"
    command = ["--method", "evol", "--rounds", "2", "--seeds", seeds, "--out", out, "--url", gateway["v1"]]
    seeds.write_text("\n".join(SEEDS[:2]) + "\n", encoding="utf-8")
    code, output = run(synth_command, command, settings_env(stack))
    assert code == 0, output
    first = out.read_text(encoding="utf-8")
    assert len(read_jsonl(out)) == 4  # two rounds of two seeds
    with out.open("a", encoding="utf-8") as f:
        f.write('{"id": "torn", "question": "cut off by a ki')  # a run killed mid-line

    seeds.write_text("\n".join(SEEDS[:3]) + "\n", encoding="utf-8")
    code, output = run(synth_command, command, settings_env(stack))
    assert code == 0, output
    text = out.read_text(encoding="utf-8")
    assert text.startswith(first) and "torn" not in text  # kept as written, the torn line gone
    records = read_jsonl(out)
    assert [r["seed"] for r in records[4:]] == [SEEDS[2], SEEDS[2]]
    assert re.search(r"skipped\s*│\s*4\b", output), output

    code, output = run(synth_command, command, settings_env(stack))
    assert code == 0 and out.read_text(encoding="utf-8") == text
    assert requests_and_retries(output) == (0, 0)


def test_self_instruct_counts_what_it_wrote_towards_count(stack, gateway, tmp_path):
    seeds, out = tmp_path / "seeds.txt", tmp_path / "synth.jsonl"
    seeds.write_text("\n".join(SEEDS) + "\n", encoding="utf-8")
    args = ["--method", "self-instruct", "--seeds", seeds, "--out", out, "--url", gateway["v1"], "--per-request", "2"]
    code, output = run(synth_command, [*args, "--count", "2"], settings_env(stack))
    assert code == 0 and len(read_jsonl(out)) == 2, output  # never more than --count, though requests bring more
    written = out.read_text(encoding="utf-8")
    code, output = run(synth_command, [*args, "--count", "2"], settings_env(stack))
    assert code == 0 and out.read_text(encoding="utf-8") == written and requests_and_retries(output) == (0, 0)


def test_synth_waits_as_the_gateways_rate_limit_asks(stack, gateway, tmp_path):
    key = create_keys(stack.redis_dsn, limited_rate=60)["limited"]  # 60 a minute, chat only
    body = {"model": "support", "messages": [{"role": "user", "content": "use up the burst"}]}
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        for _ in range(100):  # the key may burst its minute's allowance, then gets one request a second
            if client.post(gateway["v1"] + "/chat/completions", json=body).status_code == 429:
                break
        else:
            pytest.fail("no 429 after 100 requests")
    seeds, out = tmp_path / "seeds.txt", tmp_path / "synth.jsonl"
    seeds.write_text("\n".join(SEEDS[:2]) + "\n", encoding="utf-8")
    args = ["--method", "paraphrase", "--n", "1", "--seeds", seeds, "--out", out, "--url", gateway["v1"]]
    limited = ["--api-key", key, "--concurrency", "2", "--max-retries", "10"]
    code, output = run(synth_command, [*args, *limited], settings_env(stack))
    assert code == 0, output
    assert len(read_jsonl(out)) == 2
    requests, retries = requests_and_retries(output)
    assert retries > 0 and requests == 4 + retries


def test_synth_counts_failures_and_stops_on_a_refusal(stack, gateway, tmp_path):
    seeds, out = tmp_path / "seeds.txt", tmp_path / "synth.jsonl"
    seeds.write_text("\n".join(SEEDS[:2]) + "\n", encoding="utf-8")
    (dead,) = free_ports(1)
    args = ["--method", "back-translate", "--seeds", seeds, "--out", out]
    code, output = run(synth_command, [*args, "--url", f"http://127.0.0.1:{dead}/v1", "--max-retries", "1"], {})
    assert code == 1 and "2 item(s) failed" in output, output
    assert re.search(r"failed\s*│\s*2\b", output) and requests_and_retries(output) == (4, 2)
    assert read_jsonl(out) == []

    code, output = run(synth_command, [*args, "--url", gateway["v1"], "--api-key", "not-a-key"], {})
    assert code == 1 and "HTTP 401" in output, output
    assert read_jsonl(out) == []


# -- judge ----------------------------------------------------------------------------------------------------------


def items_file(path, items: list[tuple[str, str, str]]):
    lines = [json.dumps({"question": q, "answer_a": a, "answer_b": b}, ensure_ascii=False) for q, a, b in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_judge_through_the_gateway_counts_what_it_cannot_read(stack, gateway, tmp_path):
    items = items_file(
        tmp_path / "items.jsonl",
        [
            ("Where is my order?", "It shipped.", "It shipped yesterday; the tracking link is in your email."),
            ("Do you ship to Norway?", "Yes.", "No."),
            ("Is it in stock?", "Yes, it is.", "yes, it is."),  # the same answer: a tie, nothing asked
        ],
    )
    out = tmp_path / "pairs.jsonl"
    code, output = run(judge_command, [items, "--out", out, "--url", gateway["v1"]], settings_env(stack))
    assert code == 0 and read_jsonl(out) == [], output
    assert re.search(r"invalid\s*│\s*2\b", output) and re.search(r"tie\s*│\s*1\b", output), output
    assert requests_and_retries(output) == (4, 0)  # both ways round for each item that differs


def test_judge_swaps_positions_and_publishes_the_agreed_pairs(stack, fake, tmp_path):
    long_answer = "It shipped yesterday; the tracking link is in your email."
    items = items_file(
        tmp_path / "items.jsonl",
        [
            ("Where is my order?", "It shipped.", long_answer),
            ("Do you ship to Norway?", "Yes, within five business days, for free.", "Yes."),
            ("biased: is the kettle in stock?", "Yes, both kettles are.", "Yes."),
            ("flaky: can I pay by card?", "Yes.", "Yes, by Visa, Mastercard or Amex."),
        ],
    )
    out = tmp_path / "pairs.jsonl"
    args = [items, "--out", out, "--url", fake["v1"], "--model", "fake-judge", "--publish"]
    version = "tiny@judge-test"
    code, output = run(judge_command, [*args, "--base-model", "tiny", "--version", version], settings_env(stack))
    assert code == 0, output
    pairs = {p["question"]: p for p in read_jsonl(out)}
    assert set(pairs) == {"Where is my order?", "Do you ship to Norway?", "flaky: can I pay by card?"}
    assert pairs["Where is my order?"]["chosen"] == long_answer and pairs["Where is my order?"]["winner"] == "b"
    assert pairs["Do you ship to Norway?"]["rejected"] == "Yes." and pairs["Do you ship to Norway?"]["winner"] == "a"
    assert all(p["judge"] == "fake-judge" and "says more" in p["reason"] for p in pairs.values())
    assert re.search(r"tie\s*│\s*1\b", output), output  # the biased judge disagreed with itself
    requests, retries = requests_and_retries(output)
    assert (requests, retries) == (9, 1)  # 4 items both ways round, the flaky one once more

    for question, answer_a, answer_b in [json.loads(line).values() for line in items.read_text().splitlines()]:
        asked = [(first, second) for q, first, second in fake["asked"] if q == question]
        assert set(asked) == {(answer_a, answer_b), (answer_b, answer_a)}  # each answer seen in both places

    collector, wanted = Collector(stack.kafka_bootstrap, "dpo.pairs"), {p["id"] for p in pairs.values()}
    try:
        events = collector.poll_until(lambda evs: wanted <= {e.pair_id for e in evs if isinstance(e, DPOPair)})
    finally:
        collector.close()
    published = {e.pair_id: e for e in events if isinstance(e, DPOPair) and e.pair_id in wanted}
    assert set(published) == wanted
    for pair in pairs.values():
        event = published[pair["id"]]
        assert (event.source, event.base_model, event.model_version) == ("judge", "tiny", version)
        assert (event.session_id, event.prompt[0].content) == ("judge", pair["question"])
        assert (event.chosen, event.rejected) == (pair["chosen"], pair["rejected"])


def test_judge_reads_two_answer_files(fake, tmp_path):
    def answers(path, rows):
        path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows), encoding="utf-8")
        return path

    a = answers(tmp_path / "a.jsonl", [("Where is my order?", "It shipped."), ("Only in A?", "Yes.")])
    b = answers(tmp_path / "b.jsonl", [("Where is my order?", "It shipped yesterday, see the tracking link.")])
    out = tmp_path / "pairs.jsonl"
    code, output = run(judge_command, ["--answers-a", a, "--answers-b", b, "--out", out, "--url", fake["v1"]], {})
    assert code == 0, output
    assert [p["winner"] for p in read_jsonl(out)] == ["b"]
    assert re.search(r"unmatched\s*│\s*1\b", output), output
    code, output = run(judge_command, [tmp_path / "a.jsonl", "--answers-a", a, "--out", out], {})
    assert code == 2 and "give INPUT, or both" in output


# -- eval -----------------------------------------------------------------------------------------------------------


def test_eval_golden_scores_the_gateways_answers(stack, gateway, tmp_path):
    golden = tmp_path / "golden.jsonl"
    rows = [
        {"question": "Where is my order?", "answer": ECHO_ANSWER + "Where is my order?"},
        {"prompt": [{"role": "user", "content": "Do you ship to Norway?"}], "expected": "Yes, we ship to Norway."},
    ]
    golden.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["golden", golden, "--url", gateway["v1"], "--out", tmp_path / "ev"]
    code, output = run(eval_command, args, settings_env(stack))
    assert code == 0, output
    summary = json.loads((tmp_path / "ev" / "golden.json").read_text())
    assert (summary["answered"], summary["failed"], summary["exact_match"]) == (2, 0, 0.5)
    assert 0.5 < summary["rouge_l"] < 1.0
    per_item = read_jsonl(tmp_path / "ev" / "golden.jsonl")
    assert [r["exact"] for r in per_item] == [True, False] and per_item[1]["rouge_l"] > 0  # "to Norway" in common
    assert (tmp_path / "ev" / "golden.png").read_bytes().startswith(PNG)


def test_eval_winrate(stack, gateway, fake, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in SEEDS[:3]), encoding="utf-8")
    args = ["winrate", questions, "--judge-model", "fake-judge", "--out", tmp_path / "fake"]
    code, output = run(eval_command, [*args, "--model-a", "long", "--model-b", "short", "--url", fake["v1"]], {})
    assert code == 0, output
    summary = json.loads((tmp_path / "fake" / "winrate.json").read_text())
    assert (summary["a_wins"], summary["b_wins"], summary["ties"], summary["win_rate_a"]) == (3, 0, 0, 1.0)
    assert len(read_jsonl(tmp_path / "fake" / "winrate.jsonl")) == 3
    assert (tmp_path / "fake" / "winrate.png").read_bytes().startswith(PNG)

    # two names of the same version on the gateway answer alike: ties, judged by nobody
    args = ["winrate", questions, "--model-a", "support", "--model-b", "tiny", "--url", gateway["v1"]]
    code, output = run(eval_command, [*args, "--judge-url", fake["v1"], "--out", tmp_path / "gw"], settings_env(stack))
    assert code == 0, output
    summary = json.loads((tmp_path / "gw" / "winrate.json").read_text())
    assert (summary["ties"], summary["win_rate_a"], summary["failed"]) == (3, 0.5, 0)
    assert len(fake["asked"]) == 6  # only the first run's judging reached the judge


def test_eval_perplexity_on_the_tiny_model(tiny_model, tmp_path):
    plain = tmp_path / "plain"  # the same model without a chat template: question and answer as plain lines
    shutil.copytree(tiny_model, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    data = tmp_path / "valid.jsonl"
    rows = [
        {"question": "How long do refunds take?", "answer": "Refunds take 5 business days."},
        {"question": "退货需要多久？", "answer": "收到退货后五个工作日内退款。"},
    ]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    code, output = run(eval_command, ["perplexity", tiny_model, plain, "--data", data, "--out", tmp_path / "ev"], {})
    assert code == 0, output
    summary = json.loads((tmp_path / "ev" / "perplexity.json").read_text())
    assert summary["scored"] == "answer tokens"
    templated, untemplated = summary["models"]
    for result in (templated, untemplated):
        assert 1.0 < result["perplexity"] < float("inf") and result["records"] == 2 and result["answer_tokens"] > 10
    assert templated["answer_tokens"] > untemplated["answer_tokens"]  # <|im_end|> after each answer counts
    assert (tmp_path / "ev" / "perplexity.png").read_bytes().startswith(PNG)
