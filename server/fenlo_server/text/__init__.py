"""Text utilities shared by the chat stream and the pipeline steps."""
