"""serve() says whether the port is taken or the host is not this machine's."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web

from node.errors import NodeError
from node.http.app import serve


async def test_a_taken_port_asks_for_another_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NodeError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*pick another port with --port"):
            await serve(web.Application(), "127.0.0.1", port)


async def test_an_address_of_another_machine_names_the_host() -> None:
    with pytest.raises(NodeError) as caught:
        await serve(web.Application(), "192.0.2.1", 0)  # TEST-NET-1: never this machine's
    assert "check --host 192.0.2.1" in str(caught.value) and "--port" not in str(caught.value)
