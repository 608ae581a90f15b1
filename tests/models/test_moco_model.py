"""MoCo v2 module: the loss falls, the queue fills and wraps, the momentum update is exact, ghost BN equals
BatchNorm run on each group alone (keys after the shuffle), and backbone weights load from files."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pri3d.models.moco import GhostBatchNorm2d, MoCo

# float32 rounding of a few operations on values of order 1: far above it is a wrong formula
FLOAT32 = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: ResNet steps on a shared 2-core machine slow down tenfold with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(generator: torch.Generator, size: int = 8, side: int = 32) -> dict:
    """Two noisy views of ``size`` random images."""
    base = torch.rand(size, 3, side, side, generator=generator)
    return {
        "image_q": base + 0.2 * torch.randn(size, 3, side, side, generator=generator),
        "image_k": base + 0.2 * torch.randn(size, 3, side, side, generator=generator),
        "shuffle_key": torch.rand(size, generator=generator),
    }


def test_loss_falls_when_two_batches_take_turns_as_each_others_negatives():
    torch.manual_seed(0)
    model = MoCo("resnet18", queue_size=8, momentum=0.9, bn_group_size=4)
    generator = torch.Generator().manual_seed(0)
    batches = [_batch(generator), _batch(generator)]  # the queue (8) holds the other batch's keys
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(18):
        out = model(batches[step % 2])
        optimizer.zero_grad()
        out["total_loss"].backward()
        optimizer.step()
        model.end_step()
        losses.append(float(out["moco_loss"]))
    assert set(out) == {"total_loss", "moco_loss", "accuracy"} and 0 <= out["accuracy"] <= 1
    # step 0 scores against the random initial queue; from step 1 on the negatives are real keys
    assert sum(losses[-3:]) / 3 < losses[1] - 0.5, losses


def test_queue_fills_wraps_and_holds_the_enqueued_keys():
    model = MoCo("resnet18", dim=4, queue_size=10)
    keys = torch.arange(13 * 4, dtype=torch.float32).reshape(13, 4)
    model.enqueue(keys[0:4])
    assert int(model.queue_ptr) == 4 and torch.equal(model.queue[:, 0:4], keys[0:4].T)
    model.enqueue(keys[4:8])
    assert int(model.queue_ptr) == 8
    model.enqueue(keys[8:12])  # columns 8, 9, then 0, 1
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.queue, torch.cat([keys[10:12], keys[2:10]]).T)
    model.enqueue(torch.cat([keys, keys[:1]]))  # 14 keys > 10 columns: the last 10 land where they belong
    assert int(model.queue_ptr) == (2 + 14) % 10
    expected = torch.empty(10, 4)
    for n, key in enumerate(torch.cat([keys, keys[:1]])):
        expected[(2 + n) % 10] = key
    assert torch.equal(model.queue, expected.T)


def test_forward_keeps_its_keys_until_end_step_then_enqueues_them():
    torch.manual_seed(1)
    model = MoCo("resnet18", queue_size=16, bn_group_size=4)
    before = model.queue.clone()
    model(_batch(torch.Generator().manual_seed(1)))
    model(_batch(torch.Generator().manual_seed(2)))  # a second micro-batch of the same step
    assert torch.equal(model.queue, before) and int(model.queue_ptr) == 0
    model.end_step()
    assert int(model.queue_ptr) == 0  # 16 keys filled the queue once
    assert not torch.equal(model.queue[:, :8], before[:, :8])
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(16))  # unit keys
    queue, k_state = model.queue.clone(), {k: v.clone() for k, v in model.encoder_k.state_dict().items()}
    model.end_step()  # a step without a forward (all samples skipped): nothing moves
    assert torch.equal(model.queue, queue)
    assert all(torch.equal(v, k_state[k]) for k, v in model.encoder_k.state_dict().items())


def test_momentum_update_moves_the_key_encoder_by_one_minus_m_times_the_difference():
    torch.manual_seed(2)
    model = MoCo("resnet18", momentum=0.9)
    with torch.no_grad():
        for parameter in model.encoder_q.parameters():
            parameter.add_(torch.randn_like(parameter))
    query = {k: v.clone() for k, v in model.encoder_q.state_dict().items()}
    key = {k: v.clone() for k, v in model.encoder_k.state_dict().items()}
    model.momentum_update()
    parameters = {name for name, _ in model.encoder_k.named_parameters()}
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    for name, value in model.encoder_k.state_dict().items():
        if name in parameters:
            torch.testing.assert_close(
                value - key[name], 0.1 * (query[name] - key[name]), **FLOAT32, msg=name
            )
        else:  # BatchNorm statistics are the key encoder's own
            assert torch.equal(value, key[name]), name


def test_ghost_batchnorm_equals_batchnorm_on_each_group_alone():
    torch.manual_seed(3)
    ghost = GhostBatchNorm2d(5, group_size=4)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 2)
        ghost.bias.normal_()
    x = torch.randn(10, 5, 3, 4) * 3 + 1  # 3 groups: 4, 3, 3 samples
    plain = [nn.BatchNorm2d(5) for _ in range(3)]
    for bn in plain:
        bn.load_state_dict(ghost.state_dict())
    out = ghost(x)
    expected = torch.cat([bn(part) for bn, part in zip(plain, x.tensor_split(3))])
    torch.testing.assert_close(out, expected, **FLOAT32)
    mean = torch.stack([bn.running_mean for bn in plain]).mean(0)
    var = torch.stack([bn.running_var for bn in plain]).mean(0)
    torch.testing.assert_close(ghost.running_mean, mean, **FLOAT32)
    torch.testing.assert_close(ghost.running_var, var, **FLOAT32)
    assert int(ghost.num_batches_tracked) == 1
    ghost.eval()
    reference = nn.BatchNorm2d(5).eval()
    reference.load_state_dict(ghost.state_dict())
    torch.testing.assert_close(ghost(x), reference(x), **FLOAT32)
    with pytest.raises(ValueError, match="group_size=0"):
        GhostBatchNorm2d(5, group_size=0)


def test_keys_are_batchnormed_per_shuffled_group_and_queries_per_group_in_order():
    torch.manual_seed(4)
    model = MoCo("resnet18", queue_size=8, bn_group_size=4)
    batch = _batch(torch.Generator().manual_seed(4))  # 8 samples: 2 groups of 4
    plain_q = torchvision.models.resnet18(num_classes=128)
    plain_q.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    plain_q.load_state_dict(model.encoder_q.state_dict())
    plain_k = torchvision.models.resnet18(num_classes=128)
    plain_k.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    plain_k.load_state_dict(model.encoder_k.state_dict())
    order = torch.argsort(batch["shuffle_key"])
    with torch.no_grad():
        queries = torch.cat([plain_q(part) for part in batch["image_q"].split(4)])
        shuffled = torch.cat([plain_k(part) for part in batch["image_k"][order].split(4)])
        keys = torch.nn.functional.normalize(shuffled, dim=1)[torch.argsort(order)]
        torch.testing.assert_close(model.encoder_q(batch["image_q"]), queries, rtol=1e-4, atol=1e-5)
    model(batch)
    model.end_step()
    # the keys' BN groups differ from the queries' (else the test would not show the shuffle)
    assert {frozenset(g.tolist()) for g in order.split(4)} != {frozenset(range(4)), frozenset(range(4, 8))}
    # ResNet-18 forward in float32: a few ulps of its largest activations
    torch.testing.assert_close(model.queue.T, keys, rtol=1e-4, atol=1e-5)


def test_backbone_loads_from_a_torchvision_file_and_refuses_another_resnet(tmp_path):
    torch.manual_seed(5)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = MoCo("resnet18")
    head = {k: v.clone() for k, v in model.encoder_q.fc.state_dict().items()}
    model.load_backbone(tmp_path / "r18.pth")
    for name, value in source.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(model.encoder_q.state_dict()[name], value), name
            assert torch.equal(model.encoder_k.state_dict()[name], value), name
    assert all(torch.equal(v, head[k]) for k, v in model.encoder_q.fc.state_dict().items())
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"r34\.pth holds a resnet34 encoder, this model has a resnet18"):
        model.load_backbone(tmp_path / "r34.pth")
