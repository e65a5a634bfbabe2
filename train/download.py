"""`leukedge data download`: the public C-NMC release via kagglehub when available, else instructions."""

from __future__ import annotations

import shutil
from pathlib import Path

from .datasets import DatasetError
from .verify import RELEASE_DIR

KAGGLE_DATASET = "andrewmvd/leukemia-classification"
MANUAL = (
    "get the ISBI 2019 C-NMC release by hand from The Cancer Imaging Archive "
    "(https://doi.org/10.7937/tcia.2019.dc64i46r) or Kaggle (https://www.kaggle.com/datasets/"
    f"{KAGGLE_DATASET}), unpack it so that DEST/{RELEASE_DIR}/training_data exists, then run "
    "`leukedge data verify DEST`"
)


def download(dest: str | Path) -> Path:
    dest = Path(dest)
    try:
        import kagglehub
    except ImportError:
        raise DatasetError(f"kagglehub is not installed (pip install 'leukedge[download]'); or {MANUAL}") from None
    try:
        cached = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as exc:  # noqa: BLE001 - credentials, network, quota: all end the same way
        raise DatasetError(f"kagglehub could not fetch {KAGGLE_DATASET} ({exc}); {MANUAL}") from None
    src = next((p for p in [cached / RELEASE_DIR, cached] if (p / "training_data").is_dir()), None)
    if src is None:
        raise DatasetError(f"{cached}: download has no {RELEASE_DIR}/training_data; {MANUAL}")
    target = dest / RELEASE_DIR
    if not target.exists():
        shutil.copytree(src, target)
    return target
