"""minirr: a RoadRunner-style application server for Python, standard library only."""

from .wire.messages import Request, Response

__version__ = "0.1.0"
__all__ = ["Request", "Response", "__version__"]
