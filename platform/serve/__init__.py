"""The HTTP service: `maskunet serve` (Ray Serve + FastAPI)."""
