"""One declaration per operation's options: recipe keys, command-line flags and API keywords.

:mod:`~onnxsparse.options.fields` holds the parsers and :func:`~onnxsparse.options.fields.option`,
:mod:`~onnxsparse.options.base` the :class:`Options` dataclass every operation's options extend,
:mod:`~onnxsparse.options.cli` the flags generated from them.
"""

from .base import Options, OptionsError
from .fields import Bad, Cli, FieldSpec, ParseContext, option

__all__ = ["Bad", "Cli", "FieldSpec", "Options", "OptionsError", "ParseContext", "option"]
