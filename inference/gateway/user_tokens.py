"""End users signed in by the client application: per-user JSON Web Tokens, verified with PyJWT.

An application that signs its users in can give each user a token (a JWT from its identity provider) in place
of one API key for all: the gateway checks the signature and the `iss`, `aud` and `exp` claims, and the
token's `sub` becomes the user of every route (sessions, feedback, canary bucket). Such a user has the `chat`
scope only, its own request and token limits, and may not name another user (no `act_as`).

Settings (inference/gateway/settings.py): FLYWHEEL_GATEWAY_JWT_ISSUER (off while empty), _AUDIENCE,
_KEY_FILE (a PEM public key, or a shared secret for HS256) or _JWKS_URL (the provider's key set, fetched and
cached by PyJWT), _ALGORITHMS, _RATE_PER_MINUTE, _TOKENS_PER_MINUTE.

Verifying a token costs about 150 us of CPU (RS256, 2 cores): a verified token is remembered, as an API key
is, until the key cache's TTL or the token's own expiry (plus the leeway), whichever comes first.

Why PyJWT: the reference Python implementation (RFC 7519), with the claim checks (exp, nbf, iss, aud,
required claims) and JWKS key lookup built in; we write none of the cryptography.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import jwt

from inference.gateway.auth import ApiKey, TTLCache

USER_SCOPES = frozenset({"chat"})
MAX_SUBJECT = 200  # as X-User-Id: a user id is at most this long
LEEWAY_S = 30  # clock skew between the identity provider and the gateway


class InvalidUserToken(ValueError):
    """The token is not one of a signed-in user: bad signature, wrong issuer or audience, expired, no subject."""


class UserTokens:
    def __init__(
        self,
        issuer: str,
        audience: str,
        algorithms: list[str],
        rate_per_minute: int,
        tokens_per_minute: int,
        key_file: Path | None = None,
        jwks_url: str = "",
        cache_ttl_s: float = 5.0,
    ):
        if not issuer:
            raise ValueError("a JWT issuer is needed to verify user tokens")
        if (key_file is None) == (not jwks_url):
            raise ValueError("user tokens need exactly one of a key file and a JWKS URL")
        self.issuer, self.audience, self.algorithms = issuer, audience, list(algorithms)
        self.rate_per_minute, self.tokens_per_minute = rate_per_minute, tokens_per_minute
        self._key = key_file.read_text().strip() if key_file is not None else None
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None
        self._verified = TTLCache(cache_ttl_s, max_size=10_000)  # token -> (valid until, epoch s; principal)

    @classmethod
    def from_settings(cls, settings) -> UserTokens | None:
        """None when user tokens are off (no issuer set)."""
        if not settings.gateway_jwt_issuer:
            return None
        return cls(
            settings.gateway_jwt_issuer,
            settings.gateway_jwt_audience,
            settings.gateway_jwt_algorithms,
            settings.gateway_jwt_rate_per_minute,
            settings.gateway_jwt_tokens_per_minute,
            settings.gateway_jwt_key_file,
            settings.gateway_jwt_jwks_url,
            settings.gateway_key_cache_s,
        )

    async def check(self, token: str) -> ApiKey:
        """`verify`, off the event loop when a key set may have to be fetched."""
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        if self._jwks is not None:
            return await asyncio.to_thread(self.verify, token)
        return self.verify(token)

    def _remembered(self, token: str) -> ApiKey | None:
        hit, entry = self._verified.get(token)
        if hit and entry[0] > time.time():
            return entry[1]
        return None

    def verify(self, token: str) -> ApiKey:
        """The signed-in user as a principal with the `chat` scope; InvalidUserToken when the token is not valid."""
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        try:
            key = self._jwks.get_signing_key_from_jwt(token).key if self._jwks is not None else self._key
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidUserToken(f"invalid user token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT:
            raise InvalidUserToken(f"invalid user token: 'sub' must be a user id of 1 to {MAX_SUBJECT} characters")
        # One id per user of one issuer: its rate-limit buckets, and what logs name.
        user_key = hashlib.sha256(f"{self.issuer}|{subject}".encode()).hexdigest()[:12]
        principal = ApiKey(
            key_id=f"user-{user_key}",
            name=f"user {subject}",
            scopes=USER_SCOPES,
            rate_per_minute=self.rate_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            principal=subject,
        )
        self._verified.put(token, (claims["exp"] + LEEWAY_S, principal))
        return principal
