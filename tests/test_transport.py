"""The WMS client's sharded transport: requests spread over small pools, all closed at the end."""

from __future__ import annotations

import asyncio
import ssl

import httpx2

from satapi.providers.transport import POOL_SHARD_SIZE, ShardedTransport, shard_count


async def _serve(counter: list[int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counter[0] += 1  # one per connection
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_shard_count_follows_the_cap() -> None:
    assert shard_count(1) == 1
    assert shard_count(POOL_SHARD_SIZE) == 1
    assert shard_count(POOL_SHARD_SIZE + 1) == 2
    assert shard_count(200) == 200 // POOL_SHARD_SIZE


async def test_requests_spread_over_shards_and_connections_are_reused() -> None:
    connections = [0]
    server = await _serve(connections)
    port = server.sockets[0].getsockname()[1]
    transport = ShardedTransport(max_connections=40, shards=4)
    assert len(transport.shards) == 4
    try:
        async with httpx2.AsyncClient(transport=transport) as client:
            for _ in range(2):  # the second round reuses the kept-alive connections
                answers = await asyncio.gather(
                    *(client.get(f"http://127.0.0.1:{port}/") for _ in range(40))
                )
                assert [a.text for a in answers] == ["ok"] * 40
                per_shard = [len(s._pool.connections) for s in transport.shards]
                assert per_shard == [10, 10, 10, 10]
        assert connections[0] == 40
        assert all(len(s._pool.connections) == 0 for s in transport.shards)  # closed
    finally:
        server.close()
        await server.wait_closed()


def test_shards_share_one_verifying_tls_context() -> None:
    # Each context loads the CA bundle (~45 ms, ~0.9 MB): one for all 50 pools of a cap of 200.
    transport = ShardedTransport(max_connections=200)
    contexts = {id(shard._pool._ssl_context) for shard in transport.shards}
    assert len(transport.shards) == 50 and len(contexts) == 1
    context = transport.shards[0]._pool._ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
