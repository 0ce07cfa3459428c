"""openseg-r as an MCP server (the official ``mcp`` SDK): ``openseg-r serve mcp [--http]``.

Tools: ``segment`` (structured content plus the overlay image), ``list_vocabularies``
and ``explain``. The model is loaded once, before the server starts; every call goes
through the same :class:`SegmentationService` and its safety limits, and a refused
call is a tool error the agent can read while the server keeps running.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from openseg_r import __version__
from openseg_r.tools.safety import ToolInputError
from openseg_r.tools.service import TOOL_DESCRIPTION, SegmentationService, SegmentOutput, SegmentRequest

INSTRUCTIONS = (
    "openseg-r segments images into the classes you name, guided by a multimodal model's reasoning. "
    "Call `segment` with one image and a vocabulary; `list_vocabularies` names the built-in vocabularies; "
    "`explain` shows the reasoning and self-check steps behind a result's trace_id."
)


def _described(field: str):
    return Field(description=SegmentRequest.model_fields[field].description)


def build_mcp_server(service: SegmentationService) -> MCPServer:
    server = MCPServer("openseg-r", instructions=INSTRUCTIONS, version=__version__)
    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=service.limits.allow_urls)

    @server.tool(name="segment", description=TOOL_DESCRIPTION, annotations=read_only)
    def segment(
        vocabulary: Annotated[list[str] | str, _described("vocabulary")],
        image_path: Annotated[str | None, _described("image_path")] = None,
        image_base64: Annotated[str | None, _described("image_base64")] = None,
        image_url: Annotated[str | None, _described("image_url")] = None,
        reasoning: Annotated[bool, _described("reasoning")] = True,
        self_check: Annotated[bool, _described("self_check")] = False,
        masks: Annotated[Literal["rle", "png", "none"], _described("masks")] = "rle",
    ) -> Annotated[CallToolResult, SegmentOutput]:
        arguments = dict(vocabulary=vocabulary, image_path=image_path, image_base64=image_base64,
                         image_url=image_url, reasoning=reasoning, self_check=self_check, masks=masks)
        try:
            output, overlay = service.segment(arguments)
        except ToolInputError as exc:
            raise ToolError(str(exc)) from None
        return CallToolResult(
            content=[
                TextContent(type="text", text=output.summary),
                ImageContent(type="image", data=overlay, mime_type="image/png"),
            ],
            structured_content=output.model_dump(mode="json"),
        )

    @server.tool(
        name="list_vocabularies",
        description="The built-in vocabularies (benchmark class lists) that `segment` accepts by name, "
        "with their sizes and a few example classes.",
        annotations=read_only,
    )
    def list_vocabularies() -> CallToolResult:
        return _json_result({"vocabularies": service.list_vocabularies()})

    @server.tool(
        name="explain",
        description="How a `segment` result was reached: the LMM's generic and image reasoning, how its class "
        "names were aligned, the self-check questions, answers and changes, LMM calls, fallbacks and timings. "
        "Give the trace_id that `segment` returned.",
        annotations=read_only,
    )
    def explain(
        trace_id: Annotated[str, Field(description="the trace_id from a segment result", max_length=64)],
    ) -> CallToolResult:
        try:
            return _json_result(service.explain(trace_id))
        except ToolInputError as exc:
            raise ToolError(str(exc)) from None

    return server


def _json_result(data: dict) -> CallToolResult:
    """Structured content, and the same JSON as text for clients that read only text."""
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data, ensure_ascii=False))],
                          structured_content=data)


def run_mcp_server(service: SegmentationService, *, http: bool = False, host: str = "127.0.0.1",
                   port: int = 8765) -> None:
    server = build_mcp_server(service)
    if http:
        server.run("streamable-http", host=host, port=port, max_request_body_size=service.limits.max_request_bytes)
    else:
        server.run("stdio")
