"""Tools that LLM agents call: the LangChain tool and the MCP server (not built yet)."""
