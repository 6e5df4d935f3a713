"""The lab: how the built-in models are made and measured, kept apart from the product.

- `lab.train`: one trainer per built-in model (`python -m lab.train.<model> --help`),
  plus the GPU rounds (`lab/train/gpu_round*.sh`);
- `lab.eval`: the evaluation harness (`python -m lab.eval --help`) that scores any
  engine on captions of the shapes domain;
- `lab/logs/`: the training logs of the committed weights (each weights folder keeps
  its `train.json`).

The product (`pipelines/`, `ui/`) never imports from here; the lab imports the product.
The procedural domain the built-in models learn lives in the top-level `shapes` package.
"""
