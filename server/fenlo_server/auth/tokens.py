"""JWT issuing and checking.

Keys are held in a keyring by ``kid``: the HS256 secret (from FENLO_JWT_SECRET or
generated in the data directory), an optional RS256/ES256/EdDSA private key for
issuing, and public keys from a JWKS file. A token must name its key with
``kid`` and must use that key's own algorithm, so ``alg: none`` and an HS256
token signed with a public key are refused before any signature is checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fenlo_server.auth.principal import ALL_ROLES, PLATFORM_ADMIN, Principal
from fenlo_server.errors import Reason, Unauthenticated

ASYMMETRIC_ALGORITHMS = {"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "PS256"}


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key that can sign tokens, with the ``kid`` and algorithm it signs with."""

    kid: str
    algorithm: str
    key: Any


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key tokens may be checked with; a token must use exactly this algorithm."""

    kid: str
    algorithm: str
    key: Any


def hs256_kid(secret: bytes) -> str:
    """A stable, non-secret id for an HS256 secret."""
    return "hs256-" + hashlib.sha256(b"fenlo-kid:" + secret).hexdigest()[:16]


def _jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of a public JWK."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {k: jwk[k] for k in required[jwk["kty"]]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def load_private_key(path: Path, kid: str | None) -> tuple[SigningKey, VerificationKey]:
    """Load a PEM private key; return its signing key and the matching public key."""
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(private, rsa.RSAPrivateKey):
        algorithm = "RS256"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        algorithm = "EdDSA"
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    elif isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1":
        algorithm = "ES256"
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    else:
        raise ValueError(f"{path}: unsupported key type (use RSA, Ed25519 or EC P-256)")
    kid = kid or _jwk_thumbprint(jwk)
    return SigningKey(kid, algorithm, private), VerificationKey(
        kid, algorithm, private.public_key()
    )


def load_jwks(path: Path) -> list[VerificationKey]:
    """Load the public keys of a JWKS file; every key needs a ``kid``."""
    document = json.loads(path.read_text())
    keys = []
    for entry in document.get("keys", []):
        if "kid" not in entry:
            raise ValueError(f"{path}: every key needs a kid")
        if entry.get("kty") == "oct":
            raise ValueError(f"{path}: symmetric keys do not belong in a JWKS file")
        jwk = jwt.PyJWK(entry)
        algorithm = jwk.algorithm_name
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"{path}: key {entry['kid']} has unsupported algorithm {algorithm}")
        keys.append(VerificationKey(entry["kid"], algorithm, jwk.key))
    return keys


class TokenService:
    """Issues and verifies Fenlo JWTs."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        hs256_secret: bytes,
        private_key: tuple[SigningKey, VerificationKey] | None = None,
        jwks: list[VerificationKey] | None = None,
        leeway_seconds: int = 30,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        hs_key = VerificationKey(hs256_kid(hs256_secret), "HS256", hs256_secret)
        self._keys: dict[str, VerificationKey] = {hs_key.kid: hs_key}
        self._signing = SigningKey(hs_key.kid, "HS256", hs256_secret)
        if private_key is not None:
            self._signing, public = private_key
            self._keys[public.kid] = public
        for key in jwks or []:
            self._keys[key.kid] = key

    @property
    def signing_kid(self) -> str:
        return self._signing.kid

    def issue(
        self,
        *,
        subject: str,
        workspace_id: str | None,
        roles: list[str],
        ttl_seconds: int,
    ) -> str:
        """Sign a token for ``subject`` with the issuing key."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        if workspace_id is not None:
            claims["ws"] = workspace_id
        return jwt.encode(
            claims,
            self._signing.key,
            algorithm=self._signing.algorithm,
            headers={"kid": self._signing.kid},
        )

    def verify(self, token: str) -> Principal:
        """Return the principal of a valid token; raise UNAUTHENTICATED otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("the token is not a well-formed JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _invalid("the token header has no kid")
        key = self._keys.get(kid)
        if key is None:
            raise _invalid("the token's kid names no known key")
        if header.get("alg") != key.algorithm:
            raise _invalid(f"the token's algorithm is not allowed for key {kid}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                Reason.ERROR_REASON_CREDENTIALS_EXPIRED, "the token has expired"
            ) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                Reason.ERROR_REASON_CREDENTIALS_NOT_YET_VALID, "the token is not valid yet (nbf)"
            ) from None
        except jwt.InvalidAudienceError:
            raise _invalid("the token's audience is wrong") from None
        except jwt.InvalidIssuerError:
            raise _invalid("the token's issuer is wrong") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise _invalid(f"the token is invalid ({type(exc).__name__})") from None
        return _principal_from_claims(claims)


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    subject = claims["sub"]
    roles = claims.get("roles")
    if not isinstance(subject, str) or not subject:
        raise _invalid("the token's sub is empty")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(r, str) and r in ALL_ROLES for r in roles)
    ):
        raise _invalid(f"the token's roles must be a non-empty list of {sorted(ALL_ROLES)}")
    workspace = claims.get("ws")
    if workspace is not None and (not isinstance(workspace, str) or not workspace):
        raise _invalid("the token's ws must be a non-empty string")
    if workspace is None and PLATFORM_ADMIN not in roles:
        raise _invalid("the token has no ws claim (only platform_admin tokens may omit it)")
    return Principal(
        subject=subject,
        workspace_id=workspace,
        roles=frozenset(roles),
        kind="jwt",
    )


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(Reason.ERROR_REASON_CREDENTIALS_INVALID, message)
