"""`flywheel data crawl` against a real HTTP server on a free port: English and Chinese (GBK) FAQ pages, a
robots.txt that disallows one path, a page whose selectors match nothing, and local files."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from retrain.data.crawl import Pacer, crawl_command

pytestmark = pytest.mark.integration

ENGLISH = """<!doctype html><html><head><title>Help</title></head><body>
<dl class="faq">
  <dt>How do I reset my password?</dt>
  <dd><p>Open   Settings.</p><p>Choose
      Reset password.</p></dd>
  <dt>Can I change my e-mail address?</dt>
  <dd>Yes, under Account.</dd>
</dl>
<dl class="other"><dt>Not a question</dt><dd>Not an answer</dd></dl>
</body></html>"""
ENGLISH_RECORDS = [
    {"question": "How do I reset my password?", "answer": "Open Settings. Choose Reset password."},
    {"question": "Can I change my e-mail address?", "answer": "Yes, under Account."},
]

CHINESE = """<html><head><meta charset="gbk"><title>常见问题</title></head><body>
<div class="faq-item"><h3>怎么退货？</h3>
  <div class="body"><p>收到商品七天内可以申请退货。</p><p>运费由买家承担。</p></div></div>
<div class="faq-item"><h3>多久发货？</h3><div class="body"><p>付款后四十八小时内发货。</p></div></div>
</body></html>"""
CHINESE_RECORDS = [
    {"question": "怎么退货？", "answer": "收到商品七天内可以申请退货。 运费由买家承担。"},
    {"question": "多久发货？", "answer": "付款后四十八小时内发货。"},
]

PAGES = {
    "robots.txt": b"User-agent: *\nDisallow: /private/\n",
    "faq/en.html": ENGLISH.encode(),
    "faq/zh.html": CHINESE.encode("gbk"),  # served without a charset header: the <meta charset> decides
    "faq/empty.html": b"<html><body><p>Nothing to see.</p></body></html>",
    "faq/uneven.html": b"<dl class='faq'><dt>One?</dt><dd>1</dd><dt>Two?</dt></dl>",
    "private/faq.html": ENGLISH.encode(),
}


class RecordingHandler(SimpleHTTPRequestHandler):
    """Serves the folder and notes each request's path and User-Agent (the server's `requests` list)."""

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("User-Agent")))
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature; quiet test output
        pass


@pytest.fixture
def site(tmp_path):
    """Base URL of a server over PAGES (port 0: the OS picks a free one); its requests in `site.requests`."""
    for name, body in PAGES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(body)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RecordingHandler, directory=str(tmp_path)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def crawl(*args: str):
    return CliRunner().invoke(crawl_command, [*args, "--delay", "0", "--timeout", "10"])


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_pairs_questions_with_answers(site):
    url = f"{base_url(site)}/faq/en.html"
    result = crawl(url, "--question", "dl.faq dt", "--answer", "dl.faq dd")
    assert result.exit_code == 0, result.output
    assert records(result.stdout) == [{**r, "source": url} for r in ENGLISH_RECORDS]
    assert "2 records from 1 pages (0 skipped by robots.txt, 0 failed)" in result.stderr
    assert site.requests == [("/robots.txt", "flywheel-crawler"), ("/faq/en.html", "flywheel-crawler")]


def test_items_join_their_paragraphs_and_chinese_pages_decode(site, tmp_path):
    url = f"{base_url(site)}/faq/zh.html"
    out = tmp_path / "zh.jsonl"
    result = crawl(url, "--item", ".faq-item", "--question", "h3", "--answer", ".body p", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert records(out.read_text(encoding="utf-8")) == [{**r, "source": url} for r in CHINESE_RECORDS]
    assert "怎么退货" in out.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes


def test_robots_disallowed_page_is_skipped_and_failing_pages_reported(site):
    """Several pages: the good one's records are written, the disallowed one is never requested, each failing page
    is named with its counts, and the exit code is 1."""
    base = base_url(site)
    pages = [f"{base}/faq/en.html", f"{base}/private/faq.html", f"{base}/faq/empty.html", f"{base}/faq/uneven.html"]
    result = crawl(*pages, "--question", "dl.faq dt", "--answer", "dl.faq dd")

    assert result.exit_code == 1
    assert records(result.stdout) == [{**r, "source": pages[0]} for r in ENGLISH_RECORDS]
    stderr = " ".join(result.stderr.split())
    assert f"skipped: {base}/private/faq.html: disallowed by robots.txt for flywheel-crawler" in stderr
    assert f"error: {base}/faq/empty.html: the selectors match nothing (0 questions, 0 answers)" in stderr
    assert f"error: {base}/faq/uneven.html: 2 questions but 1 answers: cannot pair them" in stderr
    assert "2 records from 1 pages (1 skipped by robots.txt, 2 failed)" in stderr
    paths = [path for path, _ in site.requests]
    assert "/private/faq.html" not in paths
    assert paths.count("/robots.txt") == 1  # read once per host


def test_http_errors_fail_the_page(site):
    url = f"{base_url(site)}/faq/missing.html"
    result = crawl(url, "--question", "dt", "--answer", "dd")
    assert result.exit_code == 1
    assert f"error: {url}: HTTP 404" in " ".join(result.stderr.split())


def test_local_files(tmp_path):
    (tmp_path / "en.html").write_text(ENGLISH, encoding="utf-8")
    (tmp_path / "zh.html").write_bytes(CHINESE.encode("gbk"))
    en, zh = str(tmp_path / "en.html"), str(tmp_path / "zh.html")

    result = crawl(en, "--question", "dl.faq dt", "--answer", "dl.faq dd")
    assert result.exit_code == 0, result.output
    assert records(result.stdout) == [{**r, "source": en} for r in ENGLISH_RECORDS]

    result = crawl(zh, "--item", ".faq-item", "--question", "h3", "--answer", ".body p")
    assert result.exit_code == 0, result.output
    assert records(result.stdout) == [{**r, "source": zh} for r in CHINESE_RECORDS]


def test_an_item_without_its_answer_names_the_counts(tmp_path):
    page = tmp_path / "items.html"
    page.write_text("<div class=i><h3>A?</h3><p>a</p></div><div class=i><h3>B?</h3></div>", encoding="utf-8")
    result = crawl(str(page), "--item", ".i", "--question", "h3", "--answer", "p")
    assert result.exit_code == 1
    assert "2 items, 2 with a question, 1 with an answer" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--question", "dt[", "--answer", "dd"], "not a CSS selector"),
        (["--question", "dt", "--answer", "dd", "--delay", "-1"], "--delay"),
        (["--question", "dt"], "--answer"),
    ],
)
def test_bad_options(tmp_path, args, message):
    result = CliRunner().invoke(crawl_command, [str(tmp_path / "any.html"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_pacer_spaces_requests_per_host():
    """The delay bookkeeping on a fake clock: what it would sleep, not how long anything took."""
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(delay=1.0, clock=lambda: now[0], sleep=sleep)
    pacer.wait("a")  # first request to a host: no wait
    now[0] += 0.25
    pacer.wait("a")  # 0.25 s later: waits the remaining 0.75 s
    pacer.wait("b")  # another host: no wait
    pacer.host_delays["b"] = 5.0  # robots.txt Crawl-delay longer than --delay
    now[0] += 2.0
    pacer.wait("b")
    now[0] += 1.0
    pacer.wait("a")  # more than the delay has passed: no wait
    assert slept == [0.75, 3.0]
