"""Measuring what the engines make on the shapes domain.

``judge`` says which stated attributes of a caption hold in an image;
``engines`` adapts each engine to "caption + seed -> images"; ``run``
generates for the fixed evaluation set and writes a report
(``python -m lab.eval ENGINE --preset NAME``).
"""
