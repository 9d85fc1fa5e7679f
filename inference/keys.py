"""Every Redis key of the stack, in one place. Formats take keyword arguments: `ROUTES_KEY.format(alias=...)`.

The routing contract (gateway, workers, controller): inference/routing.py and inference/worker/spec.py describe it.
The gateway's own keys: inference/gateway/auth.py (API keys), inference/gateway/ratelimit.py (one GCRA timestamp
per key), inference/gateway/sessions.py (history, message index, owners). The controller's rollout keys:

`flywheel:rollout:<alias>`        hash  the active rollout: id, phase (loading | canary | finishing),
                                        current, canary, path, job_id, weight, started_at (epoch seconds
                                        when the canary was first routed: the window of its evidence,
                                        kept across a controller restart), retire (JSON list of
                                        versions to unload once drained), pending (JSON of the event to
                                        publish for the last transition, cleared once published),
                                        waiting (while a canary step holds: what it waits for, with
                                        the counts; a transition rewrites the record without it).
`flywheel:rollout:<alias>:queue`  list  adapter_ready events (JSON) waiting for the alias's rollout.
`flywheel:rollout:<alias>:done`   hash  version -> outcome (promoted | rolled_back): redeliveries skip.
`flywheel:releases:<alias>`       list  promoted versions, newest first, as JSON {version, path}
                                        (a hand rollback removes the version it rolls back).
`flywheel:releases:<alias>:paths` hash  version -> adapter directory of every version ever rolled out
                                        (what a hand promotion of an unloaded version loads).
"""

from __future__ import annotations

# routing: version -> weight per alias; adapter version -> directory; worker readiness records (with a TTL)
ROUTES_KEY = "flywheel:routes:{alias}"
ROUTES_PATTERN = "flywheel:routes:*"
ADAPTERS_KEY = "flywheel:adapters"
WORKER_KEY = "flywheel:workers:{index}"
WORKERS_PATTERN = "flywheel:workers:*"

# the hot-swap controller: the running rollout, its queue and outcomes; promoted releases and their paths
ROLLOUT_KEY = "flywheel:rollout:{alias}"
QUEUE_KEY = "flywheel:rollout:{alias}:queue"
DONE_KEY = "flywheel:rollout:{alias}:done"
RELEASES_KEY = "flywheel:releases:{alias}"
PATHS_KEY = "flywheel:releases:{alias}:paths"

# the gateway: API keys, rate limits, chat sessions
APIKEYS_KEY = "flywheel:apikeys"
RATELIMIT_KEY = "flywheel:ratelimit:{key_id}"
HISTORY_KEY = "flywheel:session:{session_id}"
MESSAGE_KEY = "flywheel:msg:{message_id}"
OWNER_KEY = "flywheel:session-owner:{session_id}"
ACTIVE_KEY = "flywheel:sessions:active"


def routes_key(alias: str) -> str:
    return ROUTES_KEY.format(alias=alias)


def worker_key(index: int) -> str:
    return WORKER_KEY.format(index=index)
