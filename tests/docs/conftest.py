from tests.docs.gateway import gateway

__all__ = ["gateway"]
