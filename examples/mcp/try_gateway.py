"""A real MCP client (the official Python SDK) talking to mcp-server-time through the gateway.

    pip install mcp==2.3.0 mcp-server-time==2026.10.19
    python examples/mcp/try_gateway.py [path/to/ztinfra]

It starts `ztinfra mcp-gateway` over stdio in front of `python -m mcp_server_time`, deciding in
process with examples/mcp/policies and keeping its evidence in .ztinfra-mcp/, then lists the
tools, makes one allowed call and one denied call.
"""

import asyncio
import json
import sys

from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

ZTINFRA = sys.argv[1] if len(sys.argv) > 1 else "ztinfra"


async def main() -> None:
    gateway = StdioServerParameters(
        command=ZTINFRA,
        args=[
            "mcp-gateway", "--server-name", "time", "--actor", "demo-agent",
            "--policies", "examples/mcp/policies", "--data-dir", ".ztinfra-mcp",
            "--", sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC",
        ],
    )
    async with Client(gateway) as client:
        tools = await client.list_tools()
        print("tools:", [tool.name for tool in tools.tools])

        allowed = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        print("get_current_time:", allowed.content[0].text.replace("\n", " "))

        denied = await client.call_tool(
            "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        )
        print("convert_time: isError =", denied.is_error)
        print(" ", denied.content[0].text)
        print(" ", json.dumps({k: denied.structured_content[k] for k in ("decision", "decision_id", "evidence")}))


asyncio.run(main())
