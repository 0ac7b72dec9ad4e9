"""vpopmaild on the SQL backend when the server closes a session's connection between two
commands (wait_timeout, a KILL, a restart)."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from install_site import Install
from mariadb_site import Database
from vpopmaild_site import DOMAIN, USERS, Client, make_site


@pytest.fixture
def sql_site(vhome: Install, sql_db: Database) -> Install:
    """:data:`USERS` on a fresh database."""
    sql_db.configure(vhome)
    vhome.backend = "mysql"
    return make_site(vhome)


def logged_in(inst: Install, address: str = f"admin@{DOMAIN}") -> Client:
    """A session logged in silently as ``address``."""
    client = Client(inst, "-t", "60")
    assert client.line() == "+OK "
    assert client.ask(f"slogin {address} {USERS[address]}") == "+OK "
    return client


def answer(client: Client, command: str) -> list[str]:
    """The lines of ``command``'s answer (one line, or ``+OK+`` up to ``.``)."""
    client.send(command)
    lines = [client.line(120) or ""]
    while lines[0] == "+OK+" and lines[-1] != ".":
        lines.append(client.line(120) or "")
    return lines


def session_ids(db: Database) -> list[str]:
    return [row[0] for row in db.server.rows(
        f"SELECT id FROM information_schema.processlist WHERE db = '{db.name}'")]


@pytest.fixture
def short_wait_timeout(sql_db: Database) -> Iterator[None]:
    """The server closes a connection idle 2 s."""
    old = sql_db.server.sql("SELECT @@global.wait_timeout").strip()
    sql_db.server.sql("SET GLOBAL wait_timeout = 2")
    try:
        yield
    finally:
        sql_db.server.sql(f"SET GLOBAL wait_timeout = {old}")


def test_a_session_idle_longer_than_wait_timeout_goes_on_working(
        sql_site: Install, sql_db: Database, short_wait_timeout: None) -> None:
    """The server closes the session's idle connection (wait_timeout shorter than the pause
    between two commands, an administrator's tool left open): each next command works on a
    new connection (before: each command after such a pause answered "Server has gone away",
    a tool with one command a pause never got one through)."""
    client = logged_in(sql_site)
    for command, first in ((f"user_info alice@{DOMAIN}", "+OK+"),
                           (f"add_user zed@{DOMAIN} pw", "+OK "),
                           (f"list_users {DOMAIN}", "+OK+"), (f"del_user zed@{DOMAIN}", "+OK ")):
        time.sleep(3)
        answered = answer(client, command)
        assert answered[0] == first, (command, answered)
    assert client.ask("quit") == "+OK "
    assert client.close() == 0


def test_a_session_whose_connection_is_killed_between_commands_goes_on_working(
        sql_site: Install, sql_db: Database) -> None:
    """A KILL of the session's connection (a DBA, a server restart) between two commands:
    the next command works on a new connection."""
    client = logged_in(sql_site)
    assert answer(client, f"user_info alice@{DOMAIN}")[0] == "+OK+"
    (first,) = session_ids(sql_db)
    sql_db.server.sql(f"KILL {first}")
    assert answer(client, f"user_info alice@{DOMAIN}")[0] == "+OK+"
    assert session_ids(sql_db) not in ([], [first])
    assert client.ask("quit") == "+OK "
    assert client.close() == 0
