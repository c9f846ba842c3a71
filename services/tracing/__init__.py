"""The tracing service: rich, sanitized traces of every LLM call."""
