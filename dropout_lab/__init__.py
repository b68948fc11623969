"""dropout-lab: does dropout help this CNN on CIFAR-10, and by how much?

Plain Python and torch, no Prefect (the flow in flows/ and its tasks in tasks/ wrap these):
- config.py: every run parameter declared once, the compared settings and variants, TrainConfig
- core/: the model, the data, the one trainer (stacked and CUDA-graphed paths built from the model),
  evaluation and checkpoints
- analysis/: statistics, the report's tables and figures, the run history and its trend, MLflow
- runtime/: the training process and its launcher, devices and the GPU plan, locks, the checks
  before a run, signals and the command line's temporary Prefect server
- cli/: the command lines (`dropout-lab history`, the flags of `python flows/compare.py`)
"""
