"""A protocol-faithful local stand-in for a Supabase project's HTTP front: PostgREST for the calls
the worker makes, and the API gateway that routes ``/realtime/v1`` to the Realtime stand-in.

Why it exists: no PostgREST server (nor Supabase's gateway) can be installed here, yet the worker's
REST calls must be tested with the REAL supabase-py client against a REAL Postgres. This module
speaks PostgREST's HTTP (as postgrest-py sends it) and runs each request as SQL on the given
database. It is a test double for the server only; nothing of the client or the worker is replaced.

Gateway (Supabase's Kong), on one port, like a project URL:

- every ``/rest/v1`` request needs the ``apikey`` header equal to the project key, else ``401``
  ``{"message": "Invalid API key"}`` (``No API key found in request`` when absent);
- a websocket upgrade to ``/realtime/v1/...`` is relayed byte for byte to the Realtime stand-in
  (whose own checks then apply); anything else is ``404``.

PostgREST (``/rest/v1/<table>``, the ``public`` schema, or the one named by ``Accept-Profile`` /
``Content-Profile``):

- ``GET`` with ``select=a,b``, filters ``col=<op>.<value>`` (``eq neq gt gte lt lte like ilike is
  in``), ``order=col.asc|desc``, ``limit``, ``offset``; at most ``max_rows`` rows per response
  (PostgREST's ``db-max-rows``: 1000 on a Supabase project), with ``Content-Range``;
- ``POST`` a JSON object or array: an insert; with ``Prefer: resolution=merge-duplicates`` an upsert
  on the primary key (or ``on_conflict=``); ``return=minimal`` answers ``201`` with no body,
  ``return=representation`` the rows;
- ``DELETE`` with filters (``204``);
- errors as PostgREST reports them: an unknown table ``404`` ``PGRST205`` ("Could not find the table
  'public.x' in the schema cache"), an unknown column ``400`` ``42703``, a bad filter ``400``
  ``PGRST100``, any other database error ``400`` with its SQLSTATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
from psycopg import sql

OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "LIKE", "ilike": "ILIKE"}
RESERVED = {"select", "order", "limit", "offset", "on_conflict", "columns"}


class RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PostgrestStandIn:
    """``await PostgrestStandIn(dsn, api_key=KEY, realtime_port=...).start()``; the project URL is ``url``."""

    def __init__(self, dsn: str, *, api_key: str, max_rows: int = 1000, realtime_port: int | None = None) -> None:
        self.dsn, self.api_key, self.max_rows, self.realtime_port = dsn, api_key, max_rows, realtime_port
        self.port = 0
        self.requests: list[tuple[str, str]] = []  # (method, path with query) of every REST request
        self._server: asyncio.Server | None = None
        self._db: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._relays: set[asyncio.Task[None]] = set()
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}  # per connection (httpx keeps them)

    @property
    def url(self) -> str:
        """The project URL: supabase-py derives ``/rest/v1`` and ``/realtime/v1`` from it."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> PostgrestStandIn:
        self._db = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in self._relays:
                task.cancel()
            for writer in self._handlers.values():  # ends idle handlers without cancelling them: on
                writer.transport.abort()  # Python 3.11 a cancelled handler makes asyncio log an error
            await asyncio.gather(*self._relays, *self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    # -- HTTP --------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers[handler] = writer
            handler.add_done_callback(lambda task: self._handlers.pop(task, None))
        try:
            while True:  # keep-alive: httpx reuses its connections
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, headers = _parse_head(head)
                path = urlsplit(target).path
                if path.startswith("/realtime/v1/") and headers.get("upgrade", "").lower() == "websocket":
                    await self._relay(head, reader, writer)
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, extra, payload = await self._respond(method, target, headers, body)
                _write_response(writer, status, extra, payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The gateway's websocket route: relay both ways to the Realtime stand-in."""
        if self.realtime_port is None:
            _write_response(writer, 404, {}, b'{"message":"no Realtime behind this gateway"}')
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.realtime_port)
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.close()

        tasks = {asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))}
        self._relays |= tasks
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)  # either side gone: both go
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._relays -= tasks
            up_writer.close()

    async def _respond(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        if not parts.path.startswith("/rest/v1/"):
            return 404, {}, b'{"message":"no Route matched with those values"}'
        key = headers.get("apikey")
        if key is None:
            return 401, {}, b'{"message":"No API key found in request"}'
        if key != self.api_key:
            return 401, {}, b'{"message":"Invalid API key"}'
        self.requests.append((method, target))
        table = parts.path.removeprefix("/rest/v1/")
        schema = headers.get("accept-profile") or headers.get("content-profile") or "public"
        params = parse_qsl(parts.query, keep_blank_values=True)
        try:
            async with self._lock:  # one connection, one statement at a time
                return await self._execute(method, schema, table, params, headers, body)
        except RestError as exc:
            error = {"code": exc.code, "details": None, "hint": None, "message": exc.message}
            return exc.status, {}, json.dumps(error).encode()

    async def _execute(
        self,
        method: str,
        schema: str,
        table: str,
        params: list[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        columns = await self._columns(schema, table)
        prefer = {p.strip() for p in headers.get("prefer", "").split(",") if p.strip()}
        where, values = _filters(params, columns)
        target = sql.Identifier(schema, table)
        if method == "GET":
            status, extra, payload = await self._select(target, params, columns, where, values)
            if "count=exact" in prefer:
                count = await self._run(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(target, where), values)
                extra["Content-Range"] = extra["Content-Range"].rsplit("/", 1)[0] + f"/{count[0][0]}"
            return status, extra, payload
        if method == "DELETE":
            await self._run(sql.SQL("DELETE FROM {} WHERE {}").format(target, where), values)
            return 204, {}, b""
        if method == "POST":
            rows = json.loads(body or b"null")
            rows = [rows] if isinstance(rows, dict) else rows
            if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
                raise RestError(400, "PGRST102", "Empty or invalid json")
            returned = await self._insert(schema, table, columns, rows, prefer, dict(params).get("on_conflict"))
            if "return=representation" in prefer:
                return 201, {"Content-Type": "application/json"}, json.dumps(returned, default=str).encode()
            return 201, {}, b""
        raise RestError(405, "PGRST117", f"Unsupported HTTP method: {method}")

    # -- SQL ---------------------------------------------------------------------------------------

    async def _columns(self, schema: str, table: str) -> list[str]:
        query = (
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position"
        )
        rows = await self._run(sql.SQL(query), [schema, table])
        if not rows:
            raise RestError(404, "PGRST205", f"Could not find the table '{schema}.{table}' in the schema cache")
        return [str(r[0]) for r in rows]

    async def _select(
        self,
        target: sql.Identifier,
        params: list[tuple[str, str]],
        columns: list[str],
        where: sql.Composable,
        values: list[Any],
    ) -> tuple[int, dict[str, str], bytes]:
        given = dict(params)
        wanted = [c.strip() for c in given.get("select", "*").split(",") if c.strip()]
        names = columns if wanted == ["*"] else [_known(c, columns) for c in wanted]
        order = sql.SQL("")
        if given.get("order"):
            terms = []
            for term in given["order"].split(","):
                name, _, direction = term.partition(".")
                desc = direction.split(".")[0] == "desc"
                terms.append(
                    sql.SQL("{} {}").format(sql.Identifier(_known(name, columns)), sql.SQL("DESC" if desc else "ASC"))
                )
            order = sql.SQL(" ORDER BY ") + sql.SQL(", ").join(terms)
        offset = _integer(given.get("offset", "0"), "offset")
        limit = min(_integer(given["limit"], "limit"), self.max_rows) if "limit" in given else self.max_rows
        query = sql.SQL("SELECT {} FROM {} WHERE {}{} LIMIT {} OFFSET {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            target,
            where,
            order,
            sql.Literal(limit),
            sql.Literal(offset),
        )
        rows = await self._run(query, values)
        data = [dict(zip(names, row, strict=True)) for row in rows]
        end = offset + len(data) - 1
        content_range = f"{offset}-{end}/*" if data else "*/*"
        return (
            200,
            {"Content-Type": "application/json", "Content-Range": content_range},
            json.dumps(data, default=str).encode(),
        )

    async def _insert(
        self,
        schema: str,
        table: str,
        columns: list[str],
        rows: list[dict[str, Any]],
        prefer: set[str],
        on_conflict: str | None,
    ) -> list[dict[str, Any]]:
        names = list(dict.fromkeys(name for row in rows for name in row))
        for name in names:
            _known(name, columns)
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(schema, table),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
        )
        merge = "resolution=merge-duplicates" in prefer
        if merge or "resolution=ignore-duplicates" in prefer:
            keys = on_conflict.split(",") if on_conflict else await self._primary_key(schema, table)
            update = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names)
            action = sql.SQL("DO UPDATE SET ") + update if merge else sql.SQL("DO NOTHING")
            conflict = sql.SQL(", ").join(sql.Identifier(_known(k, columns)) for k in keys)
            statement = statement + sql.SQL(" ON CONFLICT ({}) ").format(conflict) + action
        statement = statement + sql.SQL(" RETURNING *")
        returned = []
        for row in rows:
            values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in (row.get(n) for n in names)]
            returned += [dict(zip(columns, r, strict=True)) for r in await self._run(statement, values)]
        return returned

    async def _primary_key(self, schema: str, table: str) -> list[str]:
        query = (
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary"
        )
        rows = await self._run(sql.SQL(query), [f'"{schema}"."{table}"'])
        return [str(r[0]) for r in rows]

    async def _run(self, query: sql.Composable, values: list[Any]) -> list[tuple[Any, ...]]:
        assert self._db is not None
        try:
            cursor = await self._db.execute(query, values)
            return list(await cursor.fetchall()) if cursor.description else []
        except psycopg.errors.UndefinedColumn as exc:
            raise RestError(400, "42703", str(exc).splitlines()[0]) from exc
        except psycopg.Error as exc:
            raise RestError(400, exc.sqlstate or "PGRST000", str(exc).splitlines()[0]) from exc


def _known(column: str, columns: list[str]) -> str:
    if column not in columns:
        raise RestError(400, "42703", f"column {column} does not exist")
    return column


def _integer(text: str, what: str) -> int:
    if not text.isdigit():
        raise RestError(400, "PGRST100", f'"failed to parse {what} parameter ({text})"')
    return int(text)


def _filters(params: list[tuple[str, str]], columns: list[str]) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    values: list[Any] = []
    for name, spec in params:
        if name in RESERVED:
            continue
        column = sql.Identifier(_known(name, columns))
        op, dot, operand = spec.partition(".")
        if not dot:
            raise RestError(400, "PGRST100", f'"failed to parse filter ({spec})"')
        if op in OPERATORS:
            clauses.append(sql.SQL("{} {} %s").format(column, sql.SQL(OPERATORS[op])))
            values.append(operand)
        elif op == "is" and operand in ("null", "true", "false"):
            clauses.append(sql.SQL("{} IS {}").format(column, sql.SQL(operand.upper())))
        elif op == "in" and operand.startswith("(") and operand.endswith(")"):
            items = [item.strip().strip('"') for item in operand[1:-1].split(",")]
            clauses.append(sql.SQL("{}::text = ANY(%s)").format(column))
            values.append(items)
        else:
            raise RestError(400, "PGRST100", f'"failed to parse filter ({spec})"')
    return (sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("TRUE")), values


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _write_response(writer: asyncio.StreamWriter, status: int, extra: Mapping[str, str], body: bytes) -> None:
    reason = HTTPStatus(status).phrase
    headers = {"Content-Length": str(len(body)), "Connection": "keep-alive", **extra}
    if body and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1") + body)
