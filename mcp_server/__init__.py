"""The MCP server: the router and its ledger as tools for editors and agents."""
