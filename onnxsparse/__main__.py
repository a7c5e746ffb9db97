"""``python -m onnxsparse``."""

from ._signals import Terminated, signals_as_exceptions, stopped

with signals_as_exceptions():  # before the CLI's imports: a Ctrl-C at start-up is one line too
    try:
        from .cli import main

        code = main()
    except (KeyboardInterrupt, Terminated) as exc:
        code = stopped(exc)
raise SystemExit(code)
