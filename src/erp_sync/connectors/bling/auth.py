"""Bling OAuth2: keep a valid access token, refreshing it safely across processes.

Bling's refresh token changes on every refresh and the old one dies at once, so two
processes refreshing the same connection would lock each other out, and a new pair
used before it is stored would be lost with the process. Hence, for every refresh:

1. take the shared lock ``bling-refresh:<account>`` (every worker process);
2. reload the stored credentials: if another process already refreshed, use its token;
3. otherwise refresh, and **store the new pair before using it**.

A token is refreshed ahead of expiry (``REFRESH_MARGIN``) and once when Bling answers
401. A refresh Bling refuses (``invalid_grant``: revoked, expired or already used) is a
ConfigError: only the user can re-authorise the app. Tokens never appear in messages or
logs.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from erp_sync.connectors.base import ConnectorContext
from erp_sync.connectors.http import ErpHttp
from erp_sync.errors import ConfigError, ContractError, RetryableError
from erp_sync.kit import metrics

REFRESH_MARGIN = timedelta(minutes=5)
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a URL path, not a secret
LOCK_WAIT_S = 90.0


class BlingCredentials(BaseModel):
    model_config = ConfigDict(extra="ignore")

    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    access_token: str | None = None
    refresh_token: str | None = None
    # The one-time code Bling gives when the app is authorised; exchanged for the token
    # pair on first use, then dropped.
    code: str | None = None
    # When the access token expires (UTC); None = unknown, used until Bling says 401.
    expires_at: datetime | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _expires_at(creds: BlingCredentials) -> datetime | None:
    at = creds.expires_at
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at


class TokenKeeper:
    def __init__(self, ctx: ConnectorContext, http: ErpHttp, account: str) -> None:
        self.ctx = ctx
        self.http = http
        self.account = account
        self.raw: dict[str, Any] = dict(ctx.credentials)
        self.creds = self._parse(self.raw)
        self._local = asyncio.Lock()
        # The token we obtained ourselves and its lifetime: a token living less than
        # twice the margin is refreshed at half its life, not at once again.
        self._own: tuple[str, timedelta] | None = None
        self.refreshes = 0

    @staticmethod
    def _parse(raw: dict[str, Any]) -> BlingCredentials:
        try:
            return BlingCredentials.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"bling credentials.{loc}: {err['msg']}") from None

    def _fresh(self, creds: BlingCredentials) -> bool:
        if not creds.access_token:
            return False
        at = _expires_at(creds)
        if at is None:
            return True
        margin = REFRESH_MARGIN
        if self._own is not None and self._own[0] == creds.access_token:
            margin = min(margin, self._own[1] / 2)
        return at - _utcnow() > margin

    async def token(self) -> str:
        """A usable access token, refreshed first when it is about to expire."""
        if not self._fresh(self.creds):
            await self.refresh(failed=self.creds.access_token)
        assert self.creds.access_token
        return self.creds.access_token

    async def refresh(self, failed: str | None) -> None:
        """Replace ``failed`` (the token that was refused or about to expire)."""
        async with self._local:
            if self.creds.access_token != failed and self._fresh(self.creds):
                return  # another task of this process refreshed meanwhile
            try:
                async with self.ctx.lock(f"bling-refresh:{self.account}"):
                    await self._refresh_locked(failed)
            except TimeoutError:
                raise RetryableError(
                    "another worker has been refreshing this Bling connection's token for "
                    f"{LOCK_WAIT_S:g} s or more; trying again later",
                    retry_after=30,
                ) from None
            except Exception:
                metrics.TOKEN_REFRESH_FAILURES.labels("bling").inc()
                raise

    async def _refresh_locked(self, failed: str | None) -> None:
        stored = dict(await self.ctx.reload_credentials()) or self.raw
        current = self._parse(stored)
        if current.access_token and current.access_token != failed and self._fresh(current):
            self.raw, self.creds = stored, current  # another process refreshed it
            return
        if current.refresh_token:
            grant = {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
            what = "the refresh token (revoked, expired or already used"
        elif current.code:
            grant = {"grant_type": "authorization_code", "code": current.code}
            what = "the authorization code (expired or already used"
        else:
            raise ConfigError(
                "the Bling connection has no refresh token: authorise the app in Bling "
                "again and store the new code or tokens"
            )
        resp = await self.http.request(
            "POST",
            TOKEN_PATH,
            governed=False,
            ok=(400, 401),
            auth=(current.client_id, current.client_secret),
            data=grant,
            headers={"Accept": "application/json"},
        )
        if resp.status == 401:
            raise ConfigError(
                "Bling refused the app's client_id/client_secret when refreshing the token "
                f"({self.http.describe_error(resp)}); fix the connection's credentials"
            )
        if resp.status == 400:
            detail = self.http.describe_error(resp)
            if "invalid_grant" in detail:
                raise ConfigError(
                    f"Bling refused {what}: {detail}); the connection must be re-authorised "
                    "in Bling"
                )
            raise ContractError(f"Bling refused our token refresh request: {detail}")
        body = resp.json()
        try:
            access = body["access_token"]
            refresh = body["refresh_token"]
            expires_in = float(body.get("expires_in") or 0)
        except (TypeError, KeyError, ValueError):
            raise ContractError("Bling's token answer has no access_token/refresh_token") from None
        if not isinstance(access, str) or not isinstance(refresh, str) or not access:
            raise ContractError("Bling's token answer has no usable access_token/refresh_token")
        new = {k: v for k, v in stored.items() if k != "code"}
        new.update(
            access_token=access,
            refresh_token=refresh,
            expires_at=(
                (_utcnow() + timedelta(seconds=expires_in)).isoformat() if expires_in else None
            ),
        )
        # The old refresh token is dead now: store the new pair before anything else.
        await self.ctx.save_credentials(new)
        self.raw, self.creds = new, self._parse(new)
        self._own = (access, timedelta(seconds=expires_in))
        self.refreshes += 1
        metrics.TOKEN_REFRESHES.labels("bling").inc()
        if self.ctx.log is not None:
            self.ctx.log.info(
                "bling.token_refreshed", account=self.account, expires_in=int(expires_in)
            )
