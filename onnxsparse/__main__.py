"""``python -m onnxsparse``."""

from .cli import main

raise SystemExit(main())
