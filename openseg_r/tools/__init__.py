"""What agents call: the segmentation service behind the safety limits, the LangChain
tool, the MCP server and the LangGraph server app (docs/design.md §4.3)."""
