"""Data for calibration and validation: sources, activation capture, statistics."""

from .data import DataSource, InputSpec, load_data, model_input_specs, parse_shapes

__all__ = ["DataSource", "InputSpec", "load_data", "model_input_specs", "parse_shapes"]
