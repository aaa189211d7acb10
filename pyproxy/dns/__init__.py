"""The DNS responder for the cluster zone: zone (pure) and server (asyncio)."""
