"""``python -m mcp_server``: serve the router's MCP tools over stdio."""

from mcp_server.server import run_stdio

if __name__ == "__main__":
    run_stdio()
