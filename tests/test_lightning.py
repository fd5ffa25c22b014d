"""The README's PyTorch Lightning recipe, run by Lightning's Trainer on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import galcore

L = pytest.importorskip("lightning")


class GALClassifier(L.LightningModule):
    """The README's recipe: GAL as a submodule (checkpoints carry h), the step returns the surrogate."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
        self.gal = galcore.GAL(10, ratio=1e-2)
        self.h_grad_norms: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        lr = self.optimizers().param_groups[0]["lr"]
        loss = self.gal(self.model(x), lambda o: F.cross_entropy(o, y), lr=lr)
        self.log("accepted", self.gal.last_step.accepted.float(), on_step=True)
        return loss

    def on_after_backward(self) -> None:  # the test's probe: h received a gradient this step
        self.h_grad_norms.append(float(sum(p.grad.norm() for p in self.gal.parameters())))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)  # model and h together


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 20, generator=g), torch.randint(0, 10, (256,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=g)


def test_lightning_trains_with_gal_and_checkpoints_carry_h(tmp_path) -> None:
    torch.manual_seed(0)
    module = GALClassifier()
    w0 = module.model[0].weight.detach().clone()
    trainer = L.Trainer(
        max_steps=6, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
    )
    trainer.fit(module, _loader())
    assert int(module.gal.num_steps) == 6
    assert not torch.equal(module.model[0].weight, w0)  # the model trained
    assert len(module.h_grad_norms) == 6 and all(v > 0 for v in module.h_grad_norms)  # h got its gradient
    assert torch.isfinite(module.gal.last_step.loss)

    path = tmp_path / "gal.ckpt"
    trainer.save_checkpoint(path)
    restored = GALClassifier.load_from_checkpoint(path)
    assert int(restored.gal.num_steps) == 6 and restored.gal.config == module.gal.config
    for a, b in zip(restored.gal.parameters(), module.gal.parameters()):
        assert torch.equal(a, b)
