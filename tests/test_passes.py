"""The one resumable pass (deconvnet.passes): a reducer's layers, resuming, SIGTERM and checkpoint messages for
every pass (the scan's are in test_scan.py, the statistics' resuming in tests/atlas/test_atlas.py)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

import deconvnet as dn
from deconvnet.atlas import channel_stats
from deconvnet.cache import CacheWriteWarning
from deconvnet.engine import record
from deconvnet.passes import Checkpoint, StaleScanWarning, Terminated, run_pass, what_differs

from conftest import CallingBack, _small_net, images


class Sums:
    """A reducer of the simplest kind: per layer, the sum of every item's map, and the items seen in order."""

    what, doing = "sums", "summing"

    def __init__(self, layers):
        self.layers = layers

    def empty(self):
        return {"sum": {layer: torch.zeros((), dtype=torch.float64) for layer in self.layers}, "seen": []}

    def reduce(self, layer, t):
        return layer, t.double().sum()

    def add(self, state, parts, index):
        for layer in self.layers:
            assert parts[layer][0] == layer  # the reducer is told its layer
        return {"sum": {layer: state["sum"][layer] + parts[layer][1] for layer in self.layers},
                "seen": state["seen"] + index.tolist()}

    def malformed(self, state):
        return None if isinstance(state, dict) and set(state) == {"sum", "seen"} else "not sums"

    def merge(self, states):
        return {"sum": {layer: sum(s["sum"][layer] for s in states) for layer in self.layers},
                "seen": sorted(i for s in states for i in s["seen"])}


class Residual(nn.Module):
    """Not a chain (an addition): the graph engine records it."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)) + x)


@pytest.mark.parametrize("graph", [False, True])
def test_record_tells_the_reducer_which_layer_it_is_given(graph):
    torch.manual_seed(0)
    net = dn.wrap(Residual()) if graph else _small_net()
    layers = ["conv2", "conv1"] if graph else ["3", "0"]  # not in forward order: the order does not matter
    assert net.is_chain is not graph
    x = images((2, 3, 16, 16), seed=1)
    rec = record(net, x, layers, switches=False, reduce=lambda layer, t: (layer, tuple(t.shape[1:])))
    full = record(net, x, layers, switches=False)
    for layer in layers:
        assert rec.activations[layer] == (layer, tuple(full.activations[layer].shape[1:]))


def test_an_interrupted_pass_resumes_to_the_uninterrupted_one(tmp_path):
    net = _small_net()
    x = images((9, 3, 16, 16), seed=2)
    layers = ["1", "4"]
    whole = run_pass(net, CallingBack(x), layers, Sums(layers), Checkpoint(None, "key"), batch_size=2, progress=False)
    assert whole.state["seen"] == list(range(9)) and whole.n_images == 9 and whole.skipped == []

    def stop(i):
        if i == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "sums.pt"
    with pytest.raises(KeyboardInterrupt) as info:
        run_pass(net, CallingBack(x, stop), layers, Sums(layers), Checkpoint(ckpt, "key", every=100), batch_size=2,
                 progress=False)
    assert info.value.saved
    saved = torch.load(ckpt, weights_only=True)
    assert saved["next_index"] == 4 and saved["n_images"] == 4 and saved["state"]["seen"] == [0, 1, 2, 3]
    resumed = run_pass(net, CallingBack(x), layers, Sums(layers), Checkpoint(ckpt, "key"), batch_size=2, progress=False)
    assert resumed.state["seen"] == list(range(9)) and resumed.n_images == 9
    for layer in layers:
        assert torch.equal(resumed.state["sum"][layer], whole.state["sum"][layer])


def test_sigterm_during_the_statistics_saves_their_checkpoint(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    x = images((10, 3, 32, 32), seed=8)
    tops = {"conv3_1": torch.linspace(0.5, 2, net.channels["conv3_1"])}
    whole = channel_stats(net, CallingBack(x), tops, bins=8, batch_size=2, progress=False)["conv3_1"]
    sent = []

    def terminate_once(i):
        if i == 6 and not sent:
            sent.append(i)
            os.kill(os.getpid(), signal.SIGTERM)

    ckpt = tmp_path / "stats.pt"
    with pytest.raises(Terminated) as info:
        channel_stats(net, CallingBack(x, terminate_once), tops, bins=8, batch_size=2, checkpoint=ckpt,
                      checkpoint_every=100, progress=False)
    assert info.value.saved and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert torch.load(ckpt, weights_only=True)["next_index"] == 6  # three whole batches
    resumed = channel_stats(net, CallingBack(x), tops, bins=8, batch_size=2, checkpoint=ckpt, progress=False)["conv3_1"]
    for key in ("units", "units_nonpos", "image_max", "image_nonpos", "sum", "sum_sq", "min"):
        assert torch.equal(getattr(whole, key), getattr(resumed, key)), key
    assert resumed.n_images == whole.n_images == 10


def test_a_statistics_checkpoint_of_other_arguments_names_what_differs(tmp_path):
    net = dn.load_vgg("vgg11", "random", seed=3)
    x = images((4, 3, 32, 32), seed=3)
    tops = {"conv2_1": torch.ones(net.channels["conv2_1"])}
    ckpt = tmp_path / "stats.pt"
    channel_stats(net, CallingBack(x), tops, bins=8, batch_size=2, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"checkpoint '.*stats\.pt' belongs to statistics with other arguments: "
                                         r"the bins changed since it was written\. Hint: delete"):
        channel_stats(net, CallingBack(x), tops, bins=4, batch_size=2, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="the channels' maxima"):
        channel_stats(net, CallingBack(x), {"conv2_1": 2 * tops["conv2_1"]}, bins=8, batch_size=2, checkpoint=ckpt,
                      progress=False)
    good = torch.load(ckpt, weights_only=True)
    for broken in ({**good, "state": {"conv9_9": None}}, {**good, "next_index": 99}, {**good, "n_images": "4"}):
        torch.save(broken, ckpt)
        with pytest.raises(ValueError, match=r"statistics checkpoint '.*' is malformed .* Hint: delete it"):
            channel_stats(net, CallingBack(x), tops, bins=8, batch_size=2, checkpoint=ckpt, progress=False)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read statistics checkpoint .* it may be corrupt"):
        channel_stats(net, CallingBack(x), tops, bins=8, batch_size=2, checkpoint=ckpt, progress=False)


def test_a_stale_checkpoint_is_replaced_when_asked_and_what_differs_in_words(tmp_path):
    net = _small_net()
    x = images((4, 3, 16, 16), seed=4)
    ckpt = tmp_path / "sums.pt"
    run_pass(net, CallingBack(x), ["1"], Sums(["1"]), Checkpoint(ckpt, "a", {"n": 4, "k": 2}), batch_size=2,
             progress=False)
    with pytest.warns(StaleScanWarning, match="^k changed since the sums '.*' was written: summing again$"):
        again = run_pass(net, CallingBack(x), ["1"], Sums(["1"]), Checkpoint(ckpt, "b", {"n": 4, "k": 3},
                                                                       restart_stale=True),
                         batch_size=2, progress=False)
    assert again.state["seen"] == [0, 1, 2, 3] and torch.load(ckpt, weights_only=True)["fingerprint"] == "b"
    assert what_differs(None, {"k": 1}) == "model, data, layers or options"  # a checkpoint that keeps no arguments
    assert what_differs('{"bins": 8, "batch_size": 4}', {"bins": 8, "batch_size": 2}) == "the batch size"


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_pass(tmp_path, monkeypatch):
    from deconvnet import passes

    net = _small_net()
    x = images((4, 3, 16, 16), seed=5)
    monkeypatch.setattr(passes, "torch_save", lambda obj, path: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.warns(CacheWriteWarning, match=r"could not write the sums checkpoint .*\(No space left\): the sums go"):
        done = run_pass(net, CallingBack(x), ["1"], Sums(["1"]), Checkpoint(tmp_path / "c.pt", "a", every=1),
                        batch_size=2, progress=False)
    assert done.state["seen"] == [0, 1, 2, 3]
