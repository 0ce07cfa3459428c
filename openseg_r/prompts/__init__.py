"""Prompt texts: the versioned LMM prompts (:mod:`.reasoning`) and the CLIP sentence
templates (:mod:`.templates`)."""

from openseg_r.prompts.reasoning import GENERIC_REASONING, IMAGE_REASONING_SINGLE, LMMPrompt

__all__ = ["GENERIC_REASONING", "IMAGE_REASONING_SINGLE", "LMMPrompt"]
