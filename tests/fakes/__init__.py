"""Local stand-ins for clouds and guests, used by integration tests (see each module)."""
