"""The worker's ClickHouse read path on an in-process chDB: exactly the job's pairs, FINAL, wait, fail clearly.

Runs in a child process: chDB allows one data path per process, and other tests open their own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import sys, threading, time
    import clickhouse_connect
    from schemas.ddl import migrate
    from schemas.rows import columns, to_row
    from schemas.events import DPOPair
    from retrain.dataset import PairsMissing, fetch_pairs
    from tests.integration.retrain_helpers import pairs

    client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
    migrate(client)
    batch = pairs("ch", 6)
    cols = columns(DPOPair)
    insert = lambda ps: client.insert("flywheel.dpo_pairs", [to_row(p) for p in ps], column_names=cols)
    insert(batch[:4])
    insert(batch[:2])  # the sink may write a pair twice: FINAL reads it once
    insert(pairs("other", 3))  # pairs of other jobs are never read

    got = fetch_pairs(client, [p.pair_id for p in batch[:4]], wait_s=0)
    assert [p.pair_id for p in got] == [p.pair_id for p in batch[:4]], got
    assert got[0].chosen == batch[0].chosen and got[0].prompt[0]["content"] == batch[0].prompt[0].content
    assert got[0].prompt_format == "chat"

    # a code completion's pair: its prompt format comes back with it
    code = pairs("code", 1)[0].model_copy(update={"prompt_format": "text"})
    insert([code])
    [text] = fetch_pairs(client, [code.pair_id], wait_s=0)
    assert text.prompt_format == "text" and text.model_prompt == code.prompt[0].content, text

    # late pairs: the reader waits for the sink
    threading.Timer(1.0, insert, [batch[4:]]).start()
    t = time.monotonic()
    got = fetch_pairs(client, [p.pair_id for p in batch], wait_s=20, poll_s=0.2)
    assert len(got) == 6 and time.monotonic() - t >= 0.9

    try:
        fetch_pairs(client, ["ch-0", "never-1", "never-2"], wait_s=0.5, poll_s=0.1)
    except PairsMissing as exc:
        assert "2 of 3 pairs" in str(exc) and "never-1" in str(exc), exc
    else:
        raise AssertionError("missing pairs must fail the job")
    print("ok")
""")


def test_fetch_pairs_from_chdb(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "chdb")], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
