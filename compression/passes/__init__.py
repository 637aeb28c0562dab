"""Every compression method as a registered pass; importing this package registers them all."""

from compression.passes import quantize  # noqa: F401
from compression.passes import prune  # noqa: F401
from compression.passes import distill  # noqa: F401
