"""The one preprocessing resolver of the workstation (in the spirit of timm's `resolve_data_config`).

A model's input preprocessing follows from its training configuration and its backbone weights, and is
never re-typed by a caller: `train` and `tune` both resolve it here, so the two cannot disagree (tune used
to leave out `bit_depth` and could decode 12-bit TIFFs differently from train).
"""

from __future__ import annotations

from leukedge.edge.preprocess import Preprocessing

from .config import TrainConfig
from .weights import WeightsInfo, plan_weights


def resolve_preprocessing(cfg: TrainConfig, info: WeightsInfo | None = None) -> Preprocessing:
    """Preprocessing of a model trained with `cfg`.

    cfg: a validated TrainConfig (image_size in px, resize filter, bit_depth: 0 = the file's own);
    info: the backbone weights' plan (plan_weights(cfg.weights) when None): its mean/std are the scaling
    the weights were trained with (Keras' InceptionV3: x/127.5 - 1, i.e. mean = std = 127.5).
    Returns the Preprocessing stored in the card. Raises ValueError for an impossible field.
    """
    info = info or plan_weights(cfg.weights)
    return Preprocessing(size=cfg.image_size, resize=cfg.resize, mean=(info.mean,) * 3, std=(info.std,) * 3,
                         bit_depth=cfg.bit_depth or None)
