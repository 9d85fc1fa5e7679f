import pytest

from inference.routing import Route, bucket, choose, parse_routes

USERS = [f"user-{i}" for i in range(2000)]


def test_bucket_is_md5_mod_100_and_stable():
    assert bucket("alice") == int("6384e2b2184bcbf58eccf10ca7a6563c", 16) % 100
    assert all(0 <= bucket(u) < 100 for u in USERS)


def test_single_route_takes_everyone():
    assert {choose([Route("tiny", 100)], u) for u in USERS[:50]} == {"tiny"}


@pytest.mark.parametrize("canary_weight", [5, 20, 50])
def test_split_matches_weights(canary_weight):
    routes = [Route("support@v1", 100 - canary_weight), Route("support@v2", canary_weight)]
    share = sum(choose(routes, u) == "support@v2" for u in USERS) / len(USERS)
    assert abs(share - canary_weight / 100) < 0.04


def test_assignment_is_sticky_as_the_canary_grows():
    on_canary = set()
    for weight in (5, 20, 50, 100):
        routes = [Route("support@v1", 100 - weight), Route("support@v2", weight)]
        now = {u for u in USERS if choose(routes, u) == "support@v2"}
        assert on_canary <= now  # nobody moves back to the old version
        on_canary = now
    assert on_canary == set(USERS)


def test_parse_routes_drops_zero_weights_and_decodes():
    assert parse_routes({b"a": b"100", b"b": b"0"}) == [Route("a", 100)]


def test_no_routes_is_an_error():
    with pytest.raises(LookupError):
        choose([], "u")
