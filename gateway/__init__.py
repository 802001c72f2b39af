"""The HTTP face: aiohttp app factory, middlewares, routes per domain, the server."""
