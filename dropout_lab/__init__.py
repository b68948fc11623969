"""dropout-lab: does dropout help this CNN on CIFAR-10, and by how much?

Plain Python and torch, no Prefect (the flow in flows/ and its tasks in tasks/ wrap these):
- config.py: every run parameter declared once, the compared settings and variants, TrainConfig
- keys.py, redact.py, locks.py, probe.py: what identifies a result; credentials out of every output;
  file locks; remotes probed under one deadline
- core/: the model, the data, the one trainer (stacked and CUDA-graphed paths built from the model),
  evaluation, checkpoints and the re-measurement of cached models
- analysis/: statistics, the verdict, the report's tables and figures, the run history and its trend, MLflow
- runtime/: the training process and its launcher, devices and the GPU plan, the checks before a run,
  signals and the command line's temporary Prefect server
- cli/: the command lines (`dropout-lab history`, the flags of `python flows/compare.py`)

Every process that imports the package redacts credentials from every log record it creates, whoever
creates it (redact.py): the flow, its training processes, Dask workers, serve.py and the command lines.
"""

from dropout_lab.redact import redact_logs

redact_logs()
