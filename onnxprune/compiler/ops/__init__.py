"""Op handlers, one per (domain, op type), each holding every fact about its op; importing
this package fills the registry."""
from . import elementwise, layout, linear, norm, opaque, pool, reshape  # noqa: F401  (registration)
from .registry import (HANDLERS, Handler, analysis_ops, handler_for, register,  # noqa: F401
                       unregister)
