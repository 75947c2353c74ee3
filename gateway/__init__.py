"""The HTTP routes served beside the graph API: the OpenAI-compatible gateway and friends."""
