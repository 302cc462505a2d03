"""Signing keys and a key endpoint for tests: sign Graph-like notification tokens and serve them.

``SigningKey`` makes RSA keys and signs tokens (including deliberately bad ones for attack
tests), ``graph_claims`` builds the claims Graph puts in a notification token, and
``KeyServer`` (or ``key_server_app`` to mount it in another aiohttp app) serves an OpenID
configuration and a JWK set, counting requests and failing on demand.

Generating a 2048-bit key takes tens of milliseconds: share keys between tests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, Self

import anyio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm, get_default_algorithms
from jwt.utils import base64url_encode

__all__ = [
    "DEFAULT_ISSUER",
    "JWKS_PATH",
    "KEY_SERVER",
    "OPENID_CONFIG_PATH",
    "KeyServer",
    "SigningKey",
    "graph_claims",
    "jwks",
    "key_server_app",
]

DEFAULT_ISSUER: Final = "https://api.botframework.com"
OPENID_CONFIG_PATH: Final = "/.well-known/openid-configuration"
JWKS_PATH: Final = "/keys"

_HMAC_HASHES: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _b64_json(value: Mapping[str, Any]) -> bytes:
    return base64url_encode(json.dumps(dict(value), separators=(",", ":")).encode())


class SigningKey:
    """An RSA key pair for tests, identified by a key id (``kid``)."""

    def __init__(self, private_key: rsa.RSAPrivateKey, kid: str) -> None:
        self.private_key = private_key
        self.kid = kid

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, bits={self.private_key.key_size})"

    @classmethod
    def generate(cls, kid: str | None = None, *, key_size: int = 2048) -> SigningKey:
        """Generate a new RSA key (2048 bits unless asked); a random ``kid`` if none is given."""
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        return cls(private_key, kid if kid is not None else uuid.uuid4().hex)

    def jwk(self) -> dict[str, Any]:
        """Return the public key as a JWK: ``kty``, ``use=sig``, ``kid``, ``n``, ``e``, ``alg``."""
        public = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": public["n"],
            "e": public["e"],
            "alg": "RS256",
        }

    def public_pem(self) -> bytes:
        """Return the public key in PEM (SubjectPublicKeyInfo) form."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        headers: Mapping[str, Any] | None = None,
        algorithm: str = "RS256",
    ) -> str:
        """Return a compact JWT of ``claims`` signed with this key.

        The header is ``{"alg": algorithm, "typ": "JWT", "kid": self.kid}`` updated with
        ``headers``; a header value of None removes that field. Besides the RSA algorithms,
        two forgeries are supported for attack tests: ``"none"`` (empty signature) and
        ``"HS256"``/``"HS384"``/``"HS512"`` keyed with this key's public PEM bytes (the
        algorithm-confusion attack).
        """
        header: dict[str, Any] = {"alg": algorithm, "typ": "JWT", "kid": self.kid}
        header.update(headers or {})
        header = {name: value for name, value in header.items() if value is not None}
        signing_input = _b64_json(header) + b"." + _b64_json(claims)
        if algorithm == "none":
            signature = b""
        elif algorithm in _HMAC_HASHES:
            signature = hmac.new(self.public_pem(), signing_input, _HMAC_HASHES[algorithm]).digest()
        else:
            try:
                alg = get_default_algorithms()[algorithm]
            except KeyError:
                raise ValueError(
                    f"algorithm {algorithm!r} is unknown; expected an RSA algorithm such as "
                    "'RS256', or 'none' / 'HS256' for forgeries"
                ) from None
            signature = alg.sign(signing_input, alg.prepare_key(self.private_key))
        return (signing_input + b"." + base64url_encode(signature)).decode("ascii")


def jwks(*keys: SigningKey) -> dict[str, Any]:
    """Return a JWK set (``{"keys": [...]}``) with the public parts of ``keys``."""
    return {"keys": [key.jwk() for key in keys]}


def graph_claims(
    *,
    app_id: str,
    tenant_id: str,
    issuer: str = DEFAULT_ISSUER,
    lifetime: float = 3600,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Return the claims of a Graph notification token, valid from ``now`` for ``lifetime`` s.

    ``aud`` is ``app_id``, ``tid`` is ``tenant_id``; ``iat``/``nbf``/``exp`` are whole seconds.
    ``extra`` adds or overrides claims; a value of None removes that claim.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "aud": app_id,
        "iss": issuer,
        "iat": issued,
        "nbf": issued,
        "exp": int(issued + lifetime),
        "tid": tenant_id,
    }
    claims.update(extra)
    return {name: value for name, value in claims.items() if value is not None}


class KeyServer:
    """A test key endpoint: serves an OpenID configuration and a JWK set over HTTP.

    ``GET /.well-known/openid-configuration`` names ``jwks_uri`` on the host the request came
    to; ``GET /keys`` serves ``get_jwks()``. Both count their requests (``config_requests``,
    ``jwks_requests``) and answer 500 while ``failing`` is true. ``app`` is the aiohttp
    application (mountable as a sub-app); ``async with server:`` serves it on 127.0.0.1 on a
    free port (over TLS when ``ssl_context`` is given) and sets ``openid_config_url``.
    """

    def __init__(
        self,
        get_jwks: Callable[[], Mapping[str, Any]],
        *,
        issuer: str = DEFAULT_ISSUER,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.get_jwks = get_jwks
        self.issuer = issuer
        self.ssl_context = ssl_context
        self.failing = False
        self.config_requests = 0
        self.jwks_requests = 0
        self._changed: anyio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.app = web.Application()
        self.app[KEY_SERVER] = self
        self.app.router.add_get(OPENID_CONFIG_PATH, self._config, name="openid_config")
        self.app.router.add_get(JWKS_PATH, self._jwks, name="jwks")

    @classmethod
    def for_keys(
        cls,
        *keys: SigningKey,
        issuer: str = DEFAULT_ISSUER,
        ssl_context: ssl.SSLContext | None = None,
    ) -> KeyServer:
        """Return a server for the key set of ``keys`` (changeable with :meth:`set_keys`)."""
        server = cls(lambda: {"keys": []}, issuer=issuer, ssl_context=ssl_context)
        server.set_keys(*keys)
        return server

    def set_keys(self, *keys: SigningKey) -> None:
        """Serve the key set of ``keys`` from now on (no keys: an empty set)."""
        key_set = jwks(*keys)
        self.get_jwks = lambda: key_set

    @property
    def openid_config_url(self) -> str:
        """The URL of the OpenID configuration while the server runs."""
        if self._url is None:
            raise RuntimeError("KeyServer is not running; use 'async with server:' first")
        return self._url

    async def wait_until(self, predicate: Callable[[KeyServer], bool]) -> None:
        """Return once ``predicate(self)`` is true, re-checking after every request."""
        while not predicate(self):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    async def wait_for_jwks_requests(self, count: int) -> None:
        """Return once the key set has been requested at least ``count`` times."""
        await self.wait_until(lambda server: server.jwks_requests >= count)

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def _config(self, request: web.Request) -> web.Response:
        self.config_requests += 1
        self._notify()
        if self.failing:
            return web.json_response({"error": "key server failing on purpose"}, status=500)
        jwks_url = request.url.join(request.app.router["jwks"].url_for())
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": str(jwks_url),
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        self._notify()
        if self.failing:
            return web.json_response({"error": "key server failing on purpose"}, status=500)
        return web.json_response(dict(self.get_jwks()))

    async def __aenter__(self) -> Self:
        """Serve the app on 127.0.0.1 on a free port."""
        if self._runner is not None:
            raise RuntimeError("KeyServer is already running")
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._runner = runner
        scheme = "http" if self.ssl_context is None else "https"
        self._url = f"{scheme}://{host}:{port}{OPENID_CONFIG_PATH}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving."""
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()


KEY_SERVER: Final = web.AppKey("key_server", KeyServer)
"""Where :func:`key_server_app` keeps its :class:`KeyServer` in the application."""


def key_server_app(
    get_jwks: Callable[[], Mapping[str, Any]], *, issuer: str = DEFAULT_ISSUER
) -> web.Application:
    """Return an aiohttp app serving an OpenID configuration and ``get_jwks()``.

    Its state (request counters, ``failing`` switch, :meth:`KeyServer.wait_until`) is
    ``app[KEY_SERVER]``.
    """
    return KeyServer(get_jwks, issuer=issuer).app
