"""Prompt texts: CLIP sentence templates and the versioned LMM prompts."""

from openseg_r.prompts.reasoning import GENERIC_REASONING, IMAGE_REASONING_SINGLE, LMMPrompt
from openseg_r.prompts.templates import TEMPLATE_SETS, templates_for

__all__ = ["GENERIC_REASONING", "IMAGE_REASONING_SINGLE", "LMMPrompt", "TEMPLATE_SETS", "templates_for"]
