"""satapi: an async satellite-imagery analysis API."""

__version__ = "0.1.0"
