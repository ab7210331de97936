"""Talking to language models: one client (resume, replay, budget, concurrency, retries), providers behind it,
and the request/reply vocabulary. See :mod:`kernelcraft.llm.client` for the order of business of a call."""

from kernelcraft.llm.budget import spent_usd, usage_summary
from kernelcraft.llm.client import LLMClient
from kernelcraft.llm.request import request_for
from kernelcraft.llm.settings import llm_settings
from kernelcraft.llm.types import Message, Reply, Request, Usage

__all__ = ["LLMClient", "Message", "Reply", "Request", "Usage", "llm_settings", "request_for", "spent_usd",
           "usage_summary"]
