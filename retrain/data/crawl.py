"""`flywheel data crawl`: FAQ pages -> question-answer records.

Reads HTML pages (local files, or http(s) URLs fetched politely) and writes one JSON line
{"question", "answer", "source"} per question found to --out (default stdout); messages and progress go to stderr.

    flywheel data crawl https://example.com/faq --question "dl.faq dt" --answer "dl.faq dd" --out faq.jsonl
    flywheel data crawl saved/*.html --item ".faq-item" --question "h3" --answer ".body p"

Pairing: without --item, the i-th --question match goes with the i-th --answer match, so both lists must be as
long. With --item, each item holds one record: the question and answer selectors are applied inside it and all
their matches joined (an answer often spans several paragraphs). A page that matches nothing, or whose counts
differ, is reported with its counts and the crawl goes on; the exit code is 1 when any page failed. Pages that
robots.txt disallows for "flywheel-crawler" are skipped (reported, not a failure).

Politeness: robots.txt is read once per host (its Crawl-delay, when longer than --delay, wins), and requests to
one host, robots.txt included, are spaced by the delay. Redirects are followed without a new robots check.

Why these libraries: BeautifulSoup with the stdlib "html.parser" tolerates broken markup and needs no compiled
parser; soupsieve gives it CSS selectors. httpx for timeouts and redirects in one client, urllib.robotparser
because it is the standard's reference reader. Text is `get_text(" ")` with whitespace collapsed: block
elements (<p>, <li>) would otherwise run together.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.robotparser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import click
import httpx
import soupsieve
from bs4 import BeautifulSoup, Tag
from rich.console import Console
from rich.progress import Progress

USER_AGENT = "flywheel-crawler"
PARSER = "html.parser"

errors = Console(stderr=True)


class PageError(Exception):
    """A page gave no records: it could not be read, or its selectors did not pair up."""


class Disallowed(Exception):
    """robots.txt forbids the URL for USER_AGENT."""


@dataclass(frozen=True)
class Selectors:
    question: str
    answer: str
    item: str | None = None


def tag_text(tag: Tag) -> str:
    return " ".join(tag.get_text(separator=" ").split())


def extract_pairs(html: str | bytes, selectors: Selectors, source: str) -> list[dict]:
    """The page's records in page order; PageError naming the page and the counts when the selectors do not pair.

    Bytes are decoded by BeautifulSoup (a <meta charset> wins, then detection): Chinese pages are often GBK.
    """
    soup = BeautifulSoup(html, PARSER)
    if selectors.item is None:
        questions = [tag_text(t) for t in soup.select(selectors.question)]
        answers = [tag_text(t) for t in soup.select(selectors.answer)]
        _check_counts(source, len(questions), len(answers))
    else:
        items = soup.select(selectors.item)
        if not items:
            raise PageError(f"{source}: --item {selectors.item!r} matched nothing")
        question_tags = [item.select(selectors.question) for item in items]
        answer_tags = [item.select(selectors.answer) for item in items]
        with_question = sum(1 for tags in question_tags if tags)
        with_answer = sum(1 for tags in answer_tags if tags)
        if with_question < len(items) or with_answer < len(items):
            raise PageError(
                f"{source}: {len(items)} items, {with_question} with a question, {with_answer} with an answer:"
                " every item needs both"
            )
        questions = [" ".join(tag_text(t) for t in tags) for tags in question_tags]
        answers = [" ".join(tag_text(t) for t in tags) for tags in answer_tags]
    return [{"question": q, "answer": a, "source": source} for q, a in zip(questions, answers, strict=True)]


def _check_counts(source: str, questions: int, answers: int) -> None:
    if questions == 0 and answers == 0:
        raise PageError(f"{source}: the selectors match nothing (0 questions, 0 answers)")
    if questions != answers:
        raise PageError(f"{source}: {questions} questions but {answers} answers: cannot pair them")


@dataclass
class Pacer:
    """Spaces requests to one host by at least `delay` seconds (a host's own delay may be longer)."""

    delay: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    host_delays: dict[str, float] = field(default_factory=dict)  # robots.txt Crawl-delay per host
    last_request: dict[str, float] = field(default_factory=dict, init=False)

    def wait(self, host: str) -> None:
        """Sleep until `host` may be asked again, then note this request."""
        delay = max(self.delay, self.host_delays.get(host, 0.0))
        if host in self.last_request:
            remaining = self.last_request[host] + delay - self.clock()
            if remaining > 0:
                self.sleep(remaining)
        self.last_request[host] = self.clock()


class Fetcher:
    """GETs pages over one httpx client, checking each host's robots.txt first and pacing requests per host."""

    def __init__(self, client: httpx.Client, pacer: Pacer):
        self.client = client
        self.pacer = pacer
        self.robots: dict[str, urllib.robotparser.RobotFileParser] = {}

    def fetch(self, url: str) -> str | bytes:
        host = urlsplit(url).netloc
        if not self._robots(url).can_fetch(USER_AGENT, url):
            raise Disallowed(f"{url}: disallowed by robots.txt for {USER_AGENT}")
        self.pacer.wait(host)
        try:
            response = self.client.get(url)
        except httpx.HTTPError as exc:
            raise PageError(f"{url}: cannot fetch ({type(exc).__name__}: {exc})") from None
        if not response.is_success:
            raise PageError(f"{url}: HTTP {response.status_code}")
        # A charset in the header is authoritative; without one BeautifulSoup reads <meta charset> from the bytes.
        return response.text if response.charset_encoding else response.content

    def _robots(self, url: str) -> urllib.robotparser.RobotFileParser:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"  # robots.txt rules hold for one scheme, host and port
        if origin not in self.robots:
            self.robots[origin] = self._read_robots(f"{origin}/robots.txt", parts.netloc)
        return self.robots[origin]

    def _read_robots(self, robots_url: str, host: str) -> urllib.robotparser.RobotFileParser:
        """Fetched with our client (timeout, user agent) rather than RobotFileParser.read (urllib, no timeout).

        The status rules are robotparser's own: 401/403 forbid everything, other 4xx (no robots.txt) allow
        everything; a 5xx or an unreachable host is a PageError (RFC 9309: assume everything is disallowed).
        """
        robots = urllib.robotparser.RobotFileParser(robots_url)
        self.pacer.wait(host)
        try:
            response = self.client.get(robots_url)
        except httpx.HTTPError as exc:
            raise PageError(f"{robots_url}: cannot fetch ({type(exc).__name__}: {exc})") from None
        if response.status_code in (401, 403):
            robots.disallow_all = True
        elif 400 <= response.status_code < 500:
            robots.allow_all = True
        elif response.status_code >= 300:
            raise PageError(f"{robots_url}: HTTP {response.status_code}")
        else:
            robots.parse(response.text.splitlines())
            crawl_delay = robots.crawl_delay(USER_AGENT)
            if crawl_delay:
                self.pacer.host_delays[host] = float(crawl_delay)
        return robots


def read_page(page: str, fetcher: Fetcher) -> str | bytes:
    """The HTML of an http(s) URL or of a local file (PageError when it cannot be read)."""
    if urlsplit(page).scheme in ("http", "https"):
        return fetcher.fetch(page)
    try:
        return Path(page).read_bytes()
    except OSError as exc:
        raise PageError(f"{page}: cannot read ({exc.strerror or exc})") from None


def _check_selector(option: str, css: str) -> None:
    try:
        soupsieve.compile(css)
    except soupsieve.SelectorSyntaxError as exc:
        raise click.BadParameter(f"{css!r} is not a CSS selector: {exc}", param_hint=option) from None


@click.command("crawl")
@click.argument("pages", metavar="PAGE...", nargs=-1, required=True)
@click.option("--question", "question_css", required=True, help="CSS selector of the questions")
@click.option("--answer", "answer_css", required=True, help="CSS selector of the answers")
@click.option("--item", "item_css", help="CSS selector of one question-answer block; --question/--answer apply inside")
@click.option("--out", type=click.File("w", encoding="utf-8", lazy=False), default="-", help="JSONL records")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="seconds between requests to one host",
)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True, help="seconds")
def crawl_command(
    pages: tuple[str, ...],
    question_css: str,
    answer_css: str,
    item_css: str | None,
    out: TextIO,
    delay: float,
    timeout: float,
) -> None:
    """Extract question-answer records from FAQ PAGEs (local HTML files or http(s) URLs)."""
    for option, css in (("--question", question_css), ("--answer", answer_css), ("--item", item_css)):
        if css is not None:
            _check_selector(option, css)
    selectors = Selectors(question_css, answer_css, item_css)
    records = skipped = 0
    failed: list[str] = []
    client = httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=timeout, follow_redirects=True)
    fetcher = Fetcher(client, Pacer(delay))
    # transient: the bar leaves no trace in a log; the summary line below says what happened
    progress = Progress(console=errors, transient=True, disable=len(pages) < 2)
    try:
        with progress:
            for page in progress.track(pages, description="crawling"):
                try:
                    found = extract_pairs(read_page(page, fetcher), selectors, page)
                except Disallowed as exc:
                    skipped += 1
                    errors.print(f"[yellow]skipped:[/] {exc}", highlight=False, soft_wrap=True)
                    continue
                except PageError as exc:
                    failed.append(page)
                    errors.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
                    continue
                for record in found:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()  # a long crawl keeps what it has if stopped
                records += len(found)
    finally:
        client.close()
    errors.print(
        f"{records} records from {len(pages) - skipped - len(failed)} pages"
        f" ({skipped} skipped by robots.txt, {len(failed)} failed)",
        highlight=False,
    )
    if failed:
        sys.exit(1)


def main() -> None:
    crawl_command()


if __name__ == "__main__":
    main()
