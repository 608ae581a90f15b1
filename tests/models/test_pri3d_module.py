"""The pre-training module: its losses own their hyper-parameters and add nothing to the state dict."""

from __future__ import annotations

import pytest

from pri3d.losses import InfoNCE
from pri3d.models.pri3d import Pri3D


def test_the_contrastive_losses_share_one_checked_temperature():
    model = Pri3D("Res18UNet", geometric_prior=False, depth=False, temperature=0.2)
    assert isinstance(model.info_nce, InfoNCE) and model.info_nce.temperature == 0.2
    assert not any(key.startswith("info_nce") for key in model.state_dict())  # original key layout
    with pytest.raises(ValueError, match="temperature=0"):
        Pri3D("Res18UNet", geometric_prior=False, depth=False, temperature=0)
