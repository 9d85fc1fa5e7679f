"""API keys without Redis: bearer parsing, key format, hashing, the TTL cache."""

import hashlib
import re

import pytest

from inference.gateway.auth import (
    ApiKey,
    TTLCache,
    hash_key,
    key_id_of,
    new_plaintext_key,
    parse_bearer,
    well_formed,
)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer fw-abc", "fw-abc"),
        ("bearer fw-abc", "fw-abc"),
        ("BEARER   fw-abc  ", "fw-abc"),
        ("  Bearer fw-abc", "fw-abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("fw-abc", None),
        ("Bearer fw-abc extra", None),
        ("Token fw-abc", None),
    ],
)
def test_parse_bearer(header, token):
    assert parse_bearer(header) == token


def test_new_keys_have_the_documented_format_and_are_unique():
    keys = {new_plaintext_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"fw-[A-Za-z0-9_-]{40}", key)
        assert well_formed(key)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "fw-",
        "fw-" + "a" * 39,
        "fw-" + "a" * 41,
        "xx-" + "a" * 40,
        "fw-" + "a" * 39 + "!",
        "fw-" + "a" * 39 + " ",
    ],
)
def test_malformed_keys_are_rejected_before_any_lookup(candidate):
    assert not well_formed(candidate)


def test_key_id_is_the_first_12_hex_of_the_sha256():
    key = "fw-" + "a" * 40
    digest = hash_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert key_id_of(digest) == digest[:12]
    assert re.fullmatch(r"[0-9a-f]{12}", key_id_of(digest))


def test_api_key_json_round_trip_and_scopes():
    key = ApiKey("0123456789ab", "ci", frozenset({"chat", "admin"}), 600, created_at=1.5)
    assert ApiKey.from_json(key.to_json()) == key
    assert key.allows("chat") and not key.allows("train")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_ttl_cache_expires_entries():
    clock = FakeClock()
    cache = TTLCache(ttl_s=5.0, max_size=10, clock=clock)
    cache.put("a", 1)
    cache.put("miss", None)
    assert cache.get("a") == (True, 1)
    assert cache.get("miss") == (True, None)  # a cached negative answer is a hit
    clock.now = 5.0
    assert cache.get("a") == (False, None)
    assert len(cache) == 1


def test_ttl_cache_is_bounded_and_drops_least_recently_used():
    cache = TTLCache(ttl_s=5.0, max_size=2, clock=FakeClock())
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert len(cache) == 2
    assert cache.get("b") == (False, None)
    assert cache.get("a") == (True, 1)


def test_ttl_cache_discard_where():
    cache = TTLCache(ttl_s=5.0, max_size=10, clock=FakeClock())
    for k in ("ab1", "ab2", "cd1"):
        cache.put(k, k)
    cache.discard_where(lambda k: k.startswith("ab"))
    assert [cache.get(k)[0] for k in ("ab1", "ab2", "cd1")] == [False, False, True]


def test_user_tokens_need_one_key_source_and_name_their_subject(tmp_path):
    import time

    import jwt

    from inference.gateway.user_tokens import InvalidUserToken, UserTokens

    secret = tmp_path / "secret"
    secret.write_text("a-shared-secret-of-at-least-32-bytes!!\n")
    with pytest.raises(ValueError, match="exactly one"):
        UserTokens("https://id.example", "flywheel", ["HS256"], 60, 0)
    with pytest.raises(ValueError, match="issuer"):
        UserTokens("", "flywheel", ["HS256"], 60, 0, key_file=secret)
    users = UserTokens("https://id.example", "flywheel", ["HS256"], 60, 1000, key_file=secret)
    claims = {"iss": "https://id.example", "aud": "flywheel", "sub": "alice", "exp": int(time.time()) + 60}
    alice = users.verify(jwt.encode(claims, "a-shared-secret-of-at-least-32-bytes!!", "HS256"))
    assert alice.principal == "alice" and alice.scopes == {"chat"} and not alice.allows("act_as")
    assert (alice.rate_per_minute, alice.tokens_per_minute) == (60, 1000)
    assert alice.key_id == users.verify(jwt.encode(claims, "a-shared-secret-of-at-least-32-bytes!!", "HS256")).key_id
    bob = users.verify(jwt.encode({**claims, "sub": "bob"}, "a-shared-secret-of-at-least-32-bytes!!", "HS256"))
    assert bob.key_id != alice.key_id  # each user has buckets of their own
    with pytest.raises(InvalidUserToken, match="sub"):
        users.verify(jwt.encode({**claims, "sub": "x" * 201}, "a-shared-secret-of-at-least-32-bytes!!", "HS256"))
    with pytest.raises(InvalidUserToken, match="exp"):
        users.verify(
            jwt.encode(
                {k: v for k, v in claims.items() if k != "exp"}, "a-shared-secret-of-at-least-32-bytes!!", "HS256"
            )
        )


def test_a_verified_user_token_is_remembered_until_its_expiry(tmp_path, monkeypatch):
    import time

    import jwt

    from inference.gateway import user_tokens
    from inference.gateway.user_tokens import InvalidUserToken, UserTokens

    monkeypatch.setattr(user_tokens, "LEEWAY_S", 0)  # expiry exactly at `exp`, so the test need not wait 30 s
    secret = "a-shared-secret-of-at-least-32-bytes!!"
    (tmp_path / "secret").write_text(secret)
    users = UserTokens("https://id.example", "flywheel", ["HS256"], 60, 0, key_file=tmp_path / "secret")
    exp = int(time.time()) + 2
    token = jwt.encode({"iss": "https://id.example", "aud": "flywheel", "sub": "alice", "exp": exp}, secret, "HS256")
    decodes = []
    real_decode = jwt.decode
    monkeypatch.setattr(user_tokens.jwt, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    first = users.verify(token)
    assert users.verify(token) == first and len(decodes) == 1  # the second time from memory
    time.sleep(max(0.0, exp - time.time()) + 0.1)
    with pytest.raises(InvalidUserToken, match="expired"):  # past its expiry the memory does not answer
        users.verify(token)
    assert len(decodes) == 2
