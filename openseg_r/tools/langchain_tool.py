"""openseg-r as a LangChain tool, for agents built on langchain-core or LangGraph.

>>> tool = segment_tool(SegmentationService(OpenSegR(...), SafetyLimits(allowed_roots=["."])))
>>> ToolNode([tool])  # or create_react_agent(model, [tool])

The tool answers with ``content_and_artifact``: the content is the summary text plus
the overlay as an image block (what a model reads); the artifact is the full
structured output (masks as COCO RLE, the label names, the trace id), which stays
with the program. A refused call is a ``ToolException`` whose message the agent reads.
"""

from __future__ import annotations

from langchain_core.tools import StructuredTool, ToolException

from openseg_r.tools.safety import ToolInputError
from openseg_r.tools.service import TOOL_DESCRIPTION, SegmentationService, SegmentRequest

TOOL_NAME = "openseg_segment"


def segment_tool(service: SegmentationService, name: str = TOOL_NAME) -> StructuredTool:
    """A ``StructuredTool`` with a sync and an async implementation."""

    def run(**arguments) -> tuple[list[dict], dict]:
        try:
            output, overlay = service.segment(SegmentRequest.model_validate(arguments))
        except ToolInputError as exc:
            raise ToolException(str(exc)) from None
        return _content(output.summary, overlay), output.model_dump()

    async def arun(**arguments) -> tuple[list[dict], dict]:
        try:
            output, overlay = await service.asegment(SegmentRequest.model_validate(arguments))
        except ToolInputError as exc:
            raise ToolException(str(exc)) from None
        return _content(output.summary, overlay), output.model_dump()

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=name,
        description=TOOL_DESCRIPTION,
        args_schema=SegmentRequest,
        response_format="content_and_artifact",
        handle_tool_error=True,
        handle_validation_error=_validation_message,
    )


def _content(summary: str, overlay_png: str) -> list[dict]:
    """langchain-core standard content blocks: text, then the overlay image."""
    return [
        {"type": "text", "text": summary},
        {"type": "image", "base64": overlay_png, "mime_type": "image/png"},
    ]


def _validation_message(error) -> str:
    from openseg_r.errors import describe_validation_error

    try:
        return f"invalid arguments: {describe_validation_error(error)}"
    except Exception:  # not a pydantic error
        return f"invalid arguments: {error}"
