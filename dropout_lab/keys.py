"""What identifies a result: stable hashes of its inputs and of the source code that computes it.

A task's cache key covers the project modules that compute its result, found from their imports
(`project_imports`), so an edit to the training loop retrains while an edit to the plots only
re-renders, without a hand-kept list of files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from dropout_lab.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("dropout_lab", "tasks", "flows")
TRAIN_CODE = "dropout_lab.runtime.training"  # the training process: everything it imports decides the weights

# Concurrent `ast.parse` calls from several threads can fail inside CPython ("AST constructor
# recursion depth mismatch"); training tasks compute keys from threads, so keys are computed once
# per module and process, one at a time.
_lock = threading.Lock()
_hashes: dict[str, str] = {}


def _source(module: str) -> Path:
    """The file of a project module or package (`dropout_lab.core.train` → dropout_lab/core/train.py)."""
    path = REPO / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def project_imports(module: str) -> set[str]:
    """`module` and every project module it imports, at any depth, imports inside functions included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _source(name)
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            todo += [n for n in found if n.split(".")[0] in PROJECT_PACKAGES]
    return seen


def _hash_sources(module: str) -> str:
    h = hashlib.sha256()
    for name in sorted(project_imports(module)):
        h.update(name.encode() + b"\0" + _source(name).read_bytes())
    return h.hexdigest()


def code_hash(module: str) -> str:
    """SHA-256 over the source of `module` and every project module it imports (once per process)."""
    with _lock:
        if module not in _hashes:
            _hashes[module] = _hash_sources(module)
        return _hashes[module]


def stable_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def train_key(cfg: TrainConfig, data_fingerprint: str) -> str:
    """One variant's training identity: its config, the data, the training process's code."""
    return stable_hash("train", cfg.to_dict(), data_fingerprint, code_hash(TRAIN_CODE))
