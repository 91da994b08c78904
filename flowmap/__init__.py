"""flowmap: train flow maps (networks that jump along a flow ODE) and sample them in 1-4 steps."""

__version__ = "0.1.0"
