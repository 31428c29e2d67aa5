"""The CIGN model, its configuration, loss and prediction rule."""

from cign_fast.model.cign import CIGN, CIGNOutput, predict
from cign_fast.model.config import ModelConfig
from cign_fast.model.losses import cign_loss

__all__ = ["CIGN", "CIGNOutput", "ModelConfig", "cign_loss", "predict"]
