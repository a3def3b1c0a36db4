"""Wyoming text-to-speech server with streaming Piper voices."""

__version__ = "0.1.0"
