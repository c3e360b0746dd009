"""A real MCP server for the tests: the `mcp` package's own `MCPServer` over Streamable HTTP
(its default SSE answers), served by uvicorn on the loopback port given as argv[1].

Tools: `echo` (returns its text), `progress` (reports progress, then answers), `secret_row`
(a result holding an e-mail address in text and structured content), `codename` (a result
holding a blocked keyword), `admin_delete` (a tool no test role may call), `whoami` (the
`Authorization` header the server received: proves the gateway sent its own credential).
"""

import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

server = MCPServer("sluice-test-tools")


@server.tool()
def echo(text: str) -> str:
    return text


@server.tool()
async def progress(steps: int, ctx: Context) -> str:
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
    return f"did {steps} steps"


class Row(BaseModel):
    owner: str
    note: str


@server.tool()
def secret_row() -> Row:
    return Row(owner="erin@example.com", note="row of customer erin@example.com")


@server.tool()
def codename() -> str:
    return "the project is BLUEBIRD"


@server.tool()
def admin_delete() -> str:
    return "deleted everything"


@server.tool()
def whoami(ctx: Context) -> str:
    request = ctx.request_context.request
    headers = getattr(request, "headers", {}) or {}
    return f"authorization={headers.get('authorization', '')} cookie={headers.get('cookie', '')}"


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
