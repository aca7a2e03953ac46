"""The web dashboard at `/`: server-rendered pages with inline SVG charts, no JavaScript.

Pages: overview, rankings, the token price index, flows, tenants → apps → agents
drill-down, wallets → lots, tasks, and a live view of the latest events that refreshes
itself. The admin token opens it: the sign-in form sets a signed session cookie
(session.py), and a bearer header works too; failed attempts of either are braked per
client address. Each page's numbers and charts are worked out on a thread (OffLoop), never
on the event loop.

Every answer carries a Content-Security-Policy that allows no script at all, no framing and
no style element but the pages' own stylesheet (by its hash); charts' SVG keeps its inline
style attributes and embedded images (the heat map is a data: PNG), which cannot run code or
fetch anything under this policy.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from ..analytics import flows, rankings, report
from ..analytics.charts import flows_chart, index_chart, rankings_chart, report_chart, svg
from ..analytics.price_index import INDEXED_BY, Ratios, price_index
from ..analytics.tasks import agents, tasks
from ..config import Settings
from ..counting.registry import TokenizerRegistry
from ..events import rfc3339
from ..ledger.store import Store
from ..policy.wallets import wallet_tenants, wallet_with
from .offloop import OffLoop
from .session import SESSION_SECONDS, AdminToken, Sessions, scope_client
from .wire import path_parts

COOKIE = "tokometer_admin"
NAV = [("/", "Overview"), ("/rankings", "Rankings"), ("/prices", "Prices"),
       ("/flows", "Flows"), ("/tenants", "Tenants"), ("/wallets", "Wallets"),
       ("/tasks", "Tasks"), ("/live", "Live")]
NUMERIC = {"requests", "input_tokens", "output_tokens", "cache_read_tokens", "tokens", "cost",
           "share", "change_pp", "duration_ms", "tasks", "successes", "cost_per_success",
           "status", "energy_wh", "co2e_g", "tokens_per_kwh", "reference_tokens", "restated",
           "paid", "price_per_mtok", "cache_write_tokens", "reasoning_tokens", "charge",
           "margin", "balance", "allowance_left", "owed", "lots", "amount", "priority", "used",
           "forfeited", "left"}
ENERGY = ["energy_wh", "co2e_g", "tokens_per_kwh"]
Page = tuple[int, list[tuple[bytes, bytes]], bytes]
_HTML = (b"content-type", b"text/html; charset=utf-8")


class Dashboard:
    def __init__(self, settings: Settings, store: OffLoop, token: AdminToken):
        self.settings = settings
        self._run = store.run
        self.sessions = Sessions(token.token) if token.token is not None else None
        self.token = token  # shared with the admin API: one count of wrong tokens
        ratios = Ratios(TokenizerRegistry(settings.server.data_dir))  # loaded when shown
        self._pages: dict[str, _Page] = {
            **_PAGES, "prices": functools.partial(_prices, ratios=ratios),
            "wallets": functools.partial(_wallets, settings=settings)}

    async def handle(self, method: str, path: str, scope: dict[str, Any],
                     headers: dict[bytes, bytes], body: bytes) -> Page:
        status, page_headers, page = await self._page(method, path, scope, headers, body)
        return status, [*page_headers, *_guard_headers()], page

    async def _page(self, method: str, path: str, scope: dict[str, Any],
                    headers: dict[bytes, bytes], body: bytes) -> Page:
        if self.sessions is None:
            return _html(404, "login.html", title="Dashboard off",
                         error="The dashboard is off: set server.admin_token_env in the config "
                               "and start the gateway with that variable set.")
        client = scope_client(scope)
        if path == "/login":
            return self._login(method, body, client, https=scope.get("scheme") == "https")
        if not self._signed_in(headers, client):
            return 303, [(b"location", b"/login")], b""
        query = scope.get("query_string", b"")
        params = {k: v[0] for k, v in parse_qs(query.decode("latin-1")).items()}
        parts = path_parts(scope, path)
        if parts[:1] == ["tenants"] and len(parts) in (2, 4) and (len(parts) == 2
                                                                  or parts[2] == "apps"):
            data = await self._run(_drill_down, *parts[1::2])
        elif parts[:1] == ["wallets"] and len(parts) == 2:
            data = await self._run(_wallet, parts[1], self.settings)
        elif len(parts) <= 1 and (name := (parts or [""])[0]) in self._pages:
            data = await self._run(self._pages[name], params)
        else:
            return _html(404, "page.html", title="Not found", here=path,
                         intro=f"There is no page {path}.")
        return _html(200, "page.html", here="/" + (parts[0] if parts else ""), **data)

    def _signed_in(self, headers: dict[bytes, bytes], client: str) -> bool:
        """A valid session cookie, or the admin token as a bearer (a wrong one is braked)."""
        assert self.sessions is not None
        cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        if COOKIE in cookie and self.sessions.valid(cookie[COOKIE].value, time.time()):
            return True
        bearer = headers.get(b"authorization", b"").decode("latin-1").removeprefix("Bearer ")
        return (bool(bearer) and self.token.braked(client) is None
                and self.token.check(bearer.encode(), client))

    def _login(self, method: str, body: bytes, client: str, https: bool) -> Page:
        assert self.sessions is not None
        if method != "POST":
            return _html(200, "login.html", title="Sign in")
        wait = self.token.braked(client)
        if wait is not None:  # the token is not even looked at
            status, headers, page = _html(
                429, "login.html", title="Sign in",
                error=f"Too many wrong tokens from your address: try again in {wait} s.")
            return status, [*headers, (b"retry-after", str(wait).encode())], page
        token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if not self.token.check(token.encode(), client):
            return _html(401, "login.html", title="Sign in", error="That is not the admin token.")
        cookie = (f"{COOKIE}={self.sessions.issue(time.time())}; Max-Age={SESSION_SECONDS}; "
                  f"Path=/; HttpOnly; SameSite=Strict{'; Secure' if https else ''}")
        return 303, [(b"location", b"/"), (b"set-cookie", cookie.encode())], b""


@functools.cache
def _templates() -> Any:
    """Jinja2, loaded when the first page is asked for: a gateway nobody browses saves it."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("tokometer.gateway", "templates"),
                              autoescape=True)


@functools.cache
def _stylesheet() -> str:
    return (resources.files(__package__) / "templates" / "dashboard.css").read_text("utf-8")


@functools.cache
def _guard_headers() -> list[tuple[bytes, bytes]]:
    """Headers on every dashboard answer: CSP, no framing, no sniffing, no caching."""
    digest = base64.b64encode(hashlib.sha256(_stylesheet().encode()).digest()).decode()
    policy = (f"default-src 'none'; style-src 'sha256-{digest}'; "
              f"style-src-elem 'sha256-{digest}'; style-src-attr 'unsafe-inline'; "
              "img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    return [(b"content-security-policy", policy.encode()), (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store")]


def _html(status: int, template: str, **context: Any) -> Page:
    context.setdefault("here", "")
    page = _templates().get_template(template).render(nav=NAV, numeric=NUMERIC,
                                                      css=_stylesheet(), **context)
    return status, [_HTML], page.encode()


def statement_page(statement: dict[str, Any]) -> str:
    """A statement (ledger/statements.py) as a page to read and print; the JSON is what
    verifies."""
    return str(_templates().get_template("statement.html").render(
        s=statement, numeric=NUMERIC, css=_stylesheet()))


def _since(days: int) -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return rfc3339(today - timedelta(days=days))


def _tokens(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "tokens": r["input_tokens"] + r["output_tokens"]} for r in rows]


def _overview(conn: Store, params: dict[str, str]) -> dict[str, Any]:
    since = _since(30)
    days = report(conn, [], since=since, period="day")
    total = report(conn, [], since=since)  # a row per currency
    t = {"requests": sum(r["requests"] for r in total),
         "input_tokens": sum(r["input_tokens"] for r in total),
         "output_tokens": sum(r["output_tokens"] for r in total),
         "cost": ", ".join(f"{r['cost']} {r['currency']}" for r in total if r["cost"]),
         "energy_wh": sum(Decimal(r["energy_wh"] or 0) for r in total),
         "co2e_g": sum(Decimal(r["co2e_g"] or 0) for r in total)}
    models = _tokens(report(conn, ["model", "vendor"], since=since, top=10))
    return {"title": "Overview: the last 30 days", "cards": [
        ("requests", f"{t['requests']:,}"),
        ("tokens", f"{t['input_tokens'] + t['output_tokens']:,}"),
        ("cost", t["cost"] or "0"),
        ("energy", f"{t['energy_wh']:.3f} Wh"), ("CO2e", f"{t['co2e_g']:.3f} g")],
        "sections": [
            {"heading": "Tokens per day",
             "chart": svg(report_chart, days, [], "day") if days else None},
            {"heading": "Top models", "rows": models,
             "columns": ["model", "vendor", "requests", "tokens", "cost", "currency", *ENERGY]},
            {"heading": "Per day", "rows": _tokens(days),
             "columns": ["period", "requests", "tokens", "cost", "currency", *ENERGY]}]}


def _rankings(conn: Store, params: dict[str, str]) -> dict[str, Any]:
    by = params.get("by", "model") if params.get("by") in ("model", "vendor", "origin") \
        else "model"
    rows = rankings(conn, by, weeks=8)
    return {"title": f"Rankings by {by}",
            "intro": "Share of tokens per ISO week; change in percentage points since the "
                     "week before. Rank by: model · vendor · origin (add ?by=vendor).",
            "sections": [{"chart": svg(rankings_chart, rows, by) if rows else None},
                         {"rows": rows, "columns": ["week", by, "tokens", "share",
                                                    "change_pp", "energy_wh", "co2e_g"]}]}


def _prices(conn: Store, params: dict[str, str], ratios: Ratios) -> dict[str, Any]:
    by = params.get("by", "all") if params.get("by") in INDEXED_BY else "all"
    rows = price_index(conn, ratios, by, weeks=8)
    return {"title": "Token price index" + ("" if by == "all" else f" by {by}"),
            "intro": "What a million tokens cost, week by week, weighted by volume; every "
                     "model's tokens restated as o200k counts them. By: all · vendor · "
                     "origin · model (add ?by=vendor).",
            "sections": [{"chart": svg(index_chart, rows, by) if rows else None},
                         {"rows": rows, "columns": [
                             "week", *([] if by == "all" else [by]), "currency", "tokens",
                             "reference_tokens", "restated", "paid", "price_per_mtok"]}]}


def _flows(conn: Store, params: dict[str, str]) -> dict[str, Any]:
    rows = flows(conn, since=_since(30))
    return {"title": "Token flows: the last 30 days",
            "sections": [{"chart": svg(flows_chart, rows) if rows else None},
                         {"rows": rows, "columns": ["from", "to", "model_origin", "requests",
                                                    "tokens", "cost", "currency", *ENERGY]}]}


def _tenants(conn: Store, params: dict[str, str]) -> dict[str, Any]:
    rows = _tokens(report(conn, ["tenant"], since=_since(30)))
    return {"title": "Tenants: the last 30 days", "sections": [{
        "rows": rows, "columns": ["tenant", "requests", "tokens", "cost", "currency", *ENERGY],
        "links": {"tenant": lambda r: "/tenants/" + quote(r["tenant"], safe="")}}]}


def _drill_down(conn: Store, tenant: str, app: str | None = None
                ) -> dict[str, Any]:
    since = _since(30)
    where: dict[str, str | None] = {"tenant": tenant, **({"app": app} if app else {})}
    level = "agent" if app else "app"
    rows = _tokens(report(conn, [level], since=since, where=where))
    over_time = report(conn, [level], since=since, period="day", where=where)
    base = "/tenants/" + quote(tenant, safe="")
    return {"title": f"{tenant} / {app}" if app else tenant, "sections": [
        {"heading": f"Tokens per day by {level}",
         "chart": svg(report_chart, over_time, [level], "day") if over_time else None},
        {"heading": f"By {level}", "rows": rows,
         "columns": [level, "requests", "tokens", "cost", "currency", *ENERGY],
         "links": {} if app else {"app": lambda r: f"{base}/apps/{quote(r['app'], safe='')}"}}]}


def _wallets(conn: Store, params: dict[str, str], settings: Settings) -> dict[str, Any]:
    """Every tenant with credit lots or an allowance: what it has left."""
    currency = settings.server.currency
    rows = []
    for tenant in wallet_tenants(conn, settings.allowances):
        summary = wallet_with(conn, tenant, settings.allowances).summary()
        allowance = summary["allowance"]
        rows.append({"tenant": summary["tenant"], "lots": len(summary["lots"]),
                     "balance": summary["balances"].get(currency, "0"), "currency": currency,
                     "allowance_left": allowance and allowance["left"],
                     "owed": summary["owed"].get(currency)})
    return {"title": "Wallets",
            "intro": "Prepaid credit per tenant: a period's allowance is spent before the "
                     "lots bought, which are drawn lowest priority number first, then the "
                     "earliest expiry. Top up with `tokometer wallet top-up` or "
                     "POST /admin/wallets/{tenant}.",
            "sections": [{"rows": rows, "columns": ["tenant", "balance", "currency",
                                                    "allowance_left", "owed", "lots"],
                          "links": {"tenant": lambda r: "/wallets/" + quote(r["tenant"],
                                                                             safe="")}}]}


def _wallet(conn: Store, tenant: str, settings: Settings) -> dict[str, Any]:
    """One tenant's lots: bought, used, forfeited and left."""
    summary = wallet_with(conn, tenant, settings.allowances).summary()
    cards = [(f"balance {c}", v) for c, v in summary["balances"].items()]
    if (allowance := summary["allowance"]) is not None:
        cards.append((f"allowance left this {allowance['period']}",
                      f"{allowance['left']} of {allowance['amount']}"))
    cards += [(f"owed {c}", v) for c, v in summary["owed"].items() if Decimal(v)]
    return {"title": f"Wallet of {tenant}", "cards": cards, "sections": [
        {"heading": "Lots", "rows": summary["lots"],
         "columns": ["created", "currency", "amount", "priority", "expires", "used",
                     "forfeited", "left", "note"]}]}


def _tasks(conn: Store, params: dict[str, str]) -> dict[str, Any]:
    return {"title": "Agent tasks", "sections": [
        {"heading": "Per agent", "rows": agents(conn),
         "columns": ["tenant", "agent", "tasks", "successes", "cost", "currency",
                     "cost_per_success"]},
        {"heading": "Latest tasks", "rows": tasks(conn)[-100:][::-1],
         "columns": ["tenant", "task", "requests", "tokens", "cost", "currency", "duration_ms",
                     "outcome"]}]}


def _live(conn: Store, params: dict[str, str]) -> dict[str, Any]:
    columns = ["time", "tenant", "app", "agent", "provider", "model", "status",
               "input_tokens", "output_tokens", "cost", "currency", "energy_wh", "co2e_g"]
    rows = [dict(zip(columns, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(columns)} FROM events ORDER BY id DESC LIMIT 50")]
    return {"title": "Live: the latest 50 events", "refresh": 5,
            "sections": [{"rows": rows, "columns": columns}]}


_Page = Callable[[Store, dict[str, str]], dict[str, Any]]
_PAGES: dict[str, _Page] = {"": _overview, "rankings": _rankings, "flows": _flows,
                            "tenants": _tenants, "tasks": _tasks, "live": _live}
