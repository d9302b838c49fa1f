"""Correspondence (Fig. 8, Table 1): the Delta formula against brute force, the occlusion against a hand forward,
the boxes against the resize and crop of the images, and the command line."""

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

import deconvnet as dn
from deconvnet.analysis.correspondence import (
    bundled_parts,
    correspondence,
    delta,
    load_parts,
    map_box,
    mean_sign_change,
    pairwise_sign_distance,
)
from deconvnet.cli import main
from deconvnet.images import load_rgb, resize_center_crop


def _brute_delta(eps: np.ndarray) -> float:
    """The paper's formula, literally: sum over i != j of the Hamming distance of the sign vectors."""
    n = eps.shape[0]
    s = np.sign(eps)
    return float(sum(sum(int(s[i, d] != s[j, d]) for d in range(eps.shape[1]))
                     for i in range(n) for j in range(n) if i != j))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delta_equals_brute_force_on_random_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(5, 40, generator=g, dtype=torch.float64)
    eps[eps.abs() < 0.5] = 0.0  # zeros, as ReLU features that stay zero give: sign 0
    brute = _brute_delta(eps.numpy())
    assert delta(eps) == brute
    n, d = eps.shape
    mean, std = mean_sign_change(eps)
    pairs = [_brute_delta(eps[[i, j]].numpy()) / 2 / d for i, j in itertools.combinations(range(n), 2)]
    assert mean == pytest.approx(brute / (n * (n - 1) * d), abs=1e-12)
    assert mean == pytest.approx(np.mean(pairs), abs=1e-12) and std == pytest.approx(np.std(pairs), abs=1e-12)
    m = pairwise_sign_distance(eps)
    assert torch.equal(m, m.T) and float(m.diagonal().abs().max()) == 0.0


def test_identical_changes_score_zero_and_opposite_ones_one():
    e = torch.tensor([[1.0, -2.0, 0.0, 3.0]])
    assert delta(torch.cat([e, e, e])) == 0.0
    assert mean_sign_change(torch.cat([e, -e])) == (0.75, 0.0)  # the zero agrees with itself


def _tiny_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                          nn.ReLU())
    return dn.wrap(model)


def test_correspondence_matches_a_hand_forward():
    net = _tiny_net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 24, 24, generator=g)
    parts = {"eye": [(2, 3, 8, 9), (4, 4, 10, 10), (10, 12, 16, 18)], "nose": [(12, 12, 18, 18)] * 3}
    r = correspondence(net, x, parts, ["4", "2"], draws=3, seed=5, progress=False)
    assert r.layers == ["4", "2"] and r.dims == {"4": 8 * 12 * 12, "2": 6 * 12 * 12}
    for part, boxes in parts.items():
        for layer, upto in (("4", 5), ("2", 3)):
            feats = net.model[:upto]
            eps = []
            for i, (t, left, b, rr) in enumerate(boxes):
                occluded = x[i : i + 1].clone()
                occluded[..., t:b, left:rr] = 0.0
                with torch.no_grad():
                    eps.append((feats(x[i : i + 1]) - feats(occluded)).flatten().double())
            eps = torch.stack(eps)
            assert r.delta[part][layer] == _brute_delta(eps.numpy())
            assert r.score[part][layer] == pytest.approx(mean_sign_change(eps), abs=1e-12)
        for draw in r.random_boxes[part]:  # same size as the part's box, inside the image
            for (t, left, b, rr), (t0, l0, b0, r0) in zip(draw, boxes, strict=False):
                assert (b - t, rr - left) == (b0 - t0, r0 - l0) and t >= 0 and left >= 0 and b <= 24 and rr <= 24


def test_same_image_same_box_is_perfectly_consistent_and_random_is_not():
    net = _tiny_net()
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(1)).expand(3, -1, -1, -1).clone()
    r = correspondence(net, x, {"part": [(6, 6, 12, 12)] * 3}, ["4"], draws=4, progress=False)
    assert r.score["part"]["4"] == (0.0, 0.0) and r.delta["part"]["4"] == 0.0
    assert r.random["part"]["4"][0] > 0.01  # random positions differ between the images


def test_boxes_follow_the_resize_and_crop_of_the_image():
    """A white box drawn into a 451x300 image lands where map_box says after the resize and centre crop."""
    box = (102, 287, 172, 357)
    a = np.zeros((300, 451, 3), np.uint8)
    a[box[0] : box[2], box[1] : box[3]] = 255
    from PIL import Image

    out = np.asarray(resize_center_crop(Image.fromarray(a), 224, 224))[..., 0] > 127
    rows, cols = np.nonzero(out)
    t, left, b, r = map_box(box, (451, 300), 224)
    assert abs(rows.min() - t) <= 1 and abs(rows.max() + 1 - b) <= 1
    assert abs(cols.min() - left) <= 1 and abs(cols.max() + 1 - r) <= 1


def test_bundled_parts_are_inside_their_photographs():
    parts = bundled_parts()
    assert parts.images == ["astronaut", "grace_hopper", "chelsea"]
    assert set(parts.parts) == {"left_eye", "right_eye", "nose"}
    for i, name in enumerate(parts.images):
        w, h = load_rgb(name).size
        for p in parts.parts:
            t, left, b, r = parts.parts[p][i]
            assert 0 <= t < b <= h and 0 <= left < r <= w
            t, left, b, r = map_box(parts.parts[p][i], (w, h), 224)
            assert b - t >= 8 and r - left >= 8  # still a real occluder at 224 px
        # the subject's left eye is on the image's right
        assert parts.parts["left_eye"][i][1] > parts.parts["right_eye"][i][1]


def test_bad_boxes_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "boxes.json"
    bad.write_text(json.dumps({"images": {"astronaut": {"nose": [1, 2, 3, 4]}, "chelsea": {"eye": [1, 2, 3, 4]}}}))
    with pytest.raises(ValueError, match="every image needs the same parts"):
        load_parts(bad)
    bad.write_text(json.dumps({"images": {"astronaut": {"nose": [5, 2, 3, 4]}, "chelsea": {"nose": [1, 2, 3, 4]}}}))
    with pytest.raises(ValueError, match="empty or negative"):
        load_parts(bad)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "corr.png"
    code = main(["correspondence", "--weights", "random", "--size", "64", "--draws", "1", "--layers", "relu4_3",
                 "--quiet", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["n_images"] == 3 and numbers["layers"] == ["relu4_3"]
    assert 0 <= numbers["table"]["nose"]["relu4_3"]["mean"] <= 1 and "left_eye" in stdout
    code = main(["correspondence", "--boxes", str(tmp_path / "none.json"), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "boxes file not found" in err


@pytest.mark.slow
def test_figures_script_makes_both_new_figures(tmp_path, capsys):
    """figures --only evolution,correspondence (quick): Fig. 4 of the demo CNN and Fig. 8 / Table 1."""
    code = main(["figures", "--weights", "random", "--only", "evolution,correspondence", "--quick", "--quiet",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for name in ("evolution.png", "evolution.png.json", "correspondence.png", "correspondence.json"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    meta = json.loads((tmp_path / "evolution.png.json").read_text())
    assert meta["checkpoints"][0] == "init" and len(meta["training"]["accuracy"]) == 3
    assert json.loads((tmp_path / "correspondence.json").read_text())["draws"] == 2
