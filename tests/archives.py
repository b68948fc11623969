"""CIFAR-10 archives for the download and extraction tests."""

import io
import tarfile
from pathlib import Path

from dropout_lab.core.data import FOLDER_NAME


def archive_folder(folder: Path, archive: Path) -> Path:
    """Pack a batches folder as `cifar-10-python.tar.gz` is packed (a local mirror's file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=FOLDER_NAME)
    archive.write_bytes(buf.getvalue())
    return archive
