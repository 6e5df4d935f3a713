# Sourced by the lab/train/gpu_round*.sh scripts (after `cd` to the repository and setting OUT, and PY if not
# python3): offline, unbuffered Python; diffusers from the carried wheels in .whl/ where the device image lacks
# it (`pip download --no-deps diffusers==0.42.1 importlib_metadata`); $OUT made; the versions in $OUT/env.txt.
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ] && ! $PY -c "import diffusers" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
mkdir -p "$OUT"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" | tee "$OUT/env.txt"
