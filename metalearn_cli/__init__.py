"""metalearn: a command-line experiment runner for meta-learning in few-shot image recognition."""

__version__ = "0.1.0"
