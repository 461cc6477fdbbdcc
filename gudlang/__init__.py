"""gudlang: a declarative language and compiler for GUD diffusion models.

A `.gud` spec declares data, basis, prior, a component-wise noise schedule, the network and
the training and sampling settings; `gudlang` parses, validates, checks and compiles it into
torch modules. See README.md and docs/architecture.md.
"""

__version__ = "0.1.0"
LANGUAGE_VERSION = 1
