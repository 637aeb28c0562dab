"""Every compression method as a registered pass; importing this package registers them all.

Registration order (quantize, prune, distill, optimize) is the order docs and error messages list the step types.
"""

from compression.passes import quantize  # noqa: F401, I001
from compression.passes import prune  # noqa: F401
from compression.passes import distill  # noqa: F401
from compression.passes import optimize  # noqa: F401
