"""Atelier's engines, models, samplers, registry and training code.

Nothing in this package imports gradio: the UI, the command line and the
tests all drive the same generator pipelines.
"""
__version__ = "0.1.0"
