"""Canary figures per model version from the analytics store (ClickHouse or the embedded store).

Reads `flywheel.v_responses` (chat_responses FINAL with each message's latest verdict) through
clickhouse-connect at `settings.query_url`: the read-only HTTP endpoint of the embedded store, or a
ClickHouse server; `chdb://PATH` works too (tests). Writes nothing.

The controller depends on the `MetricsSource` interface only: a callable
`(alias, versions, since) -> {version: Figures}`; versions without rows get zero figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from inference.controller.rollout import Figures
from schemas import store
from schemas.views import DB

MetricsSource = Callable[[str, Sequence[str], datetime], dict[str, Figures]]

# Same conventions as the analyst views (schemas/views.py): failures are error or timeout, latency
# is over successful answers, a verdict is the message's latest feedback.
_SQL = f"""
SELECT
    model_version,
    count() AS responses,
    countIf(status != 'ok') AS errors,
    countIf(verdict != '') AS rated,
    countIf(verdict = 'thumbs_down') AS thumbs_down,
    if(countIf(status = 'ok') = 0, NULL, quantileIf(0.95)(latency_ms, status = 'ok')) AS p95,
    if(countIf(status = 'ok') = 0, NULL, avgIf(latency_ms, status = 'ok')) AS mean,
    if(countIf(status = 'ok') < 2, NULL, stddevSampIf(latency_ms, status = 'ok')) AS sd
FROM {DB}.v_responses
WHERE model_alias = %(alias)s AND model_version IN %(versions)s AND occurred_at >= %(since)s
GROUP BY model_version"""


def connect(url: str):
    """A clickhouse-connect client for http(s)://host:port or chdb://PATH."""
    return store.connect(url)


class ClickHouseMetrics:
    """MetricsSource over a clickhouse-connect client (one query per call)."""

    def __init__(self, client=None, url: str | None = None):
        self._client = client
        self.url = url

    @classmethod
    def from_url(cls, url: str) -> ClickHouseMetrics:
        """Connects on first use: the controller may start before the store."""
        return cls(url=url)

    @property
    def client(self):
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    def __call__(self, alias: str, versions: Sequence[str], since: datetime) -> dict[str, Figures]:
        since_utc = since.astimezone(UTC).replace(tzinfo=None)  # the column is DateTime64(3, 'UTC')
        result = self.client.query(_SQL, parameters={"alias": alias, "versions": tuple(versions), "since": since_utc})
        figures = {v: Figures(v) for v in versions}
        for version, responses, errors, rated, down, *latency in result.result_rows:
            p95, mean, sd = (None if x is None else float(x) for x in latency)
            figures[version] = Figures(version, int(responses), int(errors), int(rated), int(down), p95, mean, sd)
        return figures
