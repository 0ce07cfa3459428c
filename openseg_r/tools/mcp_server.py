"""openseg-r as an MCP server (the official ``mcp`` SDK): ``openseg-r serve mcp [--http]``.

Tools: ``segment`` (structured content plus the overlay image), ``list_vocabularies``
and ``explain``. The model is loaded once, before the server starts; every call goes
through the same :class:`SegmentationService` and its safety limits, and a refused
call is a tool error the agent can read while the server keeps running.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from openseg_r import __version__
from openseg_r.errors import clipped, describe_validation_error
from openseg_r.tools.lifecycle import STOP_GRACE_S, StopOnSignal
from openseg_r.tools.safety import ToolInputError
from openseg_r.tools.service import (
    TOOL_DESCRIPTION,
    SegmentationService,
    SegmentOutput,
    SegmentRequest,
    refuse_unknown_arguments,
)

INSTRUCTIONS = (
    "openseg-r segments images into the classes you name, guided by a multimodal model's reasoning. "
    "Call `segment` with one image and a vocabulary; `list_vocabularies` names the built-in vocabularies; "
    "`explain` shows the reasoning and self-check steps behind a result's trace_id."
)


def _described(field: str):
    return Field(description=SegmentRequest.model_fields[field].description)


class OneLineErrorServer(MCPServer):
    """The SDK validates a tool's arguments before our code sees them, ignores unknown
    ones and reports a wrong type as pydantic's multi-line text with a documentation URL.
    Here unknown arguments are refused, and every argument error is one short line."""

    async def call_tool(self, name, arguments, context=None):
        known = {tool.name: tool.input_schema.get("properties", {}) for tool in await self.list_tools()}
        if name not in known:
            raise ToolError(f"Unknown tool: {clipped(name)}")
        try:
            refuse_unknown_arguments(arguments, known[name])
        except ToolInputError as exc:
            raise ToolError(f"Error executing tool {name}: {exc}") from None
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(
                    f"Error executing tool {name}: invalid arguments: {describe_validation_error(exc.__cause__)}"
                ) from exc.__cause__
            raise


def build_mcp_server(service: SegmentationService) -> MCPServer:
    server = OneLineErrorServer("openseg-r", instructions=INSTRUCTIONS, version=__version__)
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
        instances: Annotated[bool, _described("instances")] = False,
        panoptic: Annotated[bool, _described("panoptic")] = False,
    ) -> Annotated[CallToolResult, SegmentOutput]:
        arguments = dict(
            vocabulary=vocabulary,
            image_path=image_path,
            image_base64=image_base64,
            image_url=image_url,
            reasoning=reasoning,
            self_check=self_check,
            masks=masks,
            instances=instances,
            panoptic=panoptic,
        )
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
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data, ensure_ascii=False))], structured_content=data
    )


def run_mcp_server(
    service: SegmentationService, *, http: bool = False, host: str = "127.0.0.1", port: int = 8765
) -> int | None:
    """Serve until the client leaves (stdio) or a signal comes. Returns the exit code
    after a signal (None: the client closed stdin). SIGINT and SIGTERM stop the server
    within a few seconds even in the middle of a long segmentation (:class:`StopOnSignal`)."""
    server = build_mcp_server(service)
    stop = StopOnSignal(service)
    with stop.installed():
        try:
            if http:
                anyio.run(_serve_http, server, stop, host, port, service.limits.max_request_bytes)
            else:
                server.run("stdio")
        except KeyboardInterrupt:
            if stop.signal is None:  # not one of ours: the usual interrupt
                raise
    if stop.signal is None:
        return None
    stop.farewell()
    return stop.exit_code


async def _serve_http(server: MCPServer, stop: StopOnSignal, host: str, port: int, max_body: int) -> None:
    """The SDK's streamable-HTTP server, with uvicorn's graceful shutdown bounded (it
    otherwise waits for every open stream) and its signal handling telling ``stop``."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            stop.notice(sig)
            super().handle_exit(sig, frame)

    app = server.streamable_http_app(host=host, max_request_body_size=max_body)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=server.settings.log_level.lower(),
        timeout_graceful_shutdown=STOP_GRACE_S / 2,
    )
    await Server(config).serve()
