"""The atlas website: links, HTML, the numbers against the scan and brute force, resuming, the command,
and a real browser (headless Chromium from Debian's packages)."""

from __future__ import annotations

import html.parser
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import deconvnet as dn
from deconvnet.atlas import build_atlas, channel_stats
from deconvnet.cli import main
from deconvnet.data import demo_collection
from deconvnet.engine import receptive_field
from deconvnet.figure2 import feature_tiles
from deconvnet.plot import scale_for_display
from deconvnet.scan import TopK, scan_top_k

from conftest import BROKEN_IMAGES_JS, HOSTILE, _photo, chromium, no_forward_hooks

LAYERS = ["conv3_1", "conv4_2"]


@pytest.fixture(scope="module")
def net():
    return dn.load_vgg("vgg11", "random", seed=3)


@pytest.fixture(scope="module")
def data(net):
    return demo_collection(preprocessing=net.preprocessing, size=64, n=10)


@pytest.fixture(scope="module")
def atlas(net, data, tmp_path_factory):
    """A small atlas, lossless (png) so that tiles can be compared pixel for pixel; batch 1, so that every
    forward is bitwise the brute force's."""
    out = tmp_path_factory.mktemp("atlas") / "site"
    result = build_atlas(net, data, LAYERS, out, features=4, select="strongest", image_format="png", batch_size=1,
                         progress=False)
    assert no_forward_hooks(net)
    return result


# --- strict HTML ----------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(html.parser.HTMLParser):
    """Python's tolerant parser, made strict: every element closed in order, no duplicate ids or
    attributes, a doctype, one title; collects every link and image reference."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.ids, self.refs, self.errors, self.doctype, self.tags = [], set(), [], [], False, []

    def handle_decl(self, decl):
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def _start(self, tag, attrs, closed):
        names = [a for a, _ in attrs]
        if len(names) != len(set(names)):
            self.errors.append(f"duplicate attribute in <{tag}> at {self.getpos()}")
        a = dict(attrs)
        self.tags.append((tag, a) if not self.stack_in_svg() else (f"svg:{tag}", a))
        if "id" in a:
            if a["id"] in self.ids:
                self.errors.append(f"duplicate id {a['id']!r}")
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.refs.append((tag, a[key]))
        if tag == "img":
            for key in ("alt", "width", "height"):
                if key not in a:
                    self.errors.append(f"<img src={a.get('src')!r}> has no {key}")
        if not closed and tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_starttag(self, tag, attrs):
        self._start(tag, attrs, closed=False)

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID and not self.stack_in_svg():
            self.errors.append(f"self-closed <{tag}/> outside svg at {self.getpos()}")
        self._start(tag, attrs, closed=True)

    def stack_in_svg(self):
        return any(t == "svg" for t, _ in self.stack)

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag of void element </{tag}> at {self.getpos()}")
        elif not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> at {self.getpos()} does not close "
                               f"{self.stack[-1] if self.stack else 'anything'}")
        else:
            self.stack.pop()


def parse_page(path: Path) -> StrictHTML:
    text = path.read_text(encoding="utf-8")
    p = StrictHTML()
    p.feed(text)
    p.close()
    errors = list(p.errors)
    if not p.doctype:
        errors.append("no <!DOCTYPE html>")
    if p.stack:
        errors.append(f"unclosed elements {p.stack}")
    tags = [t for t, _ in p.tags]
    if tags.count("title") != 1 or tags.count("html") != 1 or tags.count("main") != 1:
        errors.append("needs one html, title and main")
    if not any(t == "meta" and a.get("charset", "").lower() == "utf-8" for t, a in p.tags):
        errors.append("no <meta charset='utf-8'>")
    if not any(t == "html" and a.get("lang") for t, a in p.tags):
        errors.append("<html> has no lang")
    try:  # a second opinion where html5lib is installed (it is not a dependency)
        import html5lib

        html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)
    except ImportError:
        pass
    except Exception as err:
        errors.append(f"html5lib: {err}")
    assert not errors, f"{path}: {errors}"
    return p


def site_pages(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.html") if "scans" not in p.parts)


def test_every_page_is_valid_html_and_every_local_reference_resolves(atlas, net):
    out = atlas.out
    pages = site_pages(out)
    assert len(pages) == 1 + sum(len(c) for c in atlas.channels.values()) == 1 + 8
    parsed = {p.resolve(): parse_page(p) for p in pages}
    n_refs = 0
    for page, p in parsed.items():
        text = page.read_text()
        assert net.describe() in text  # the weights on every page, never hidden
        for tag, ref in p.refs:
            parts = urlsplit(ref)
            assert not parts.scheme and not parts.netloc, f"{page.name}: external reference {ref}"
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            assert target.is_file(), f"{page.relative_to(out)}: {tag} {ref} does not exist"
            assert out.resolve() in target.parents, f"{ref} leaves the atlas"
            if parts.fragment:
                ids = parsed[target].ids if target.suffix == ".html" else set()
                assert parts.fragment in ids, f"{page.relative_to(out)}: {ref}: no element with that id"
            n_refs += 1
    assert n_refs > 100
    for static in (out / "static").iterdir():  # no url(...) or fetch to elsewhere in the style or script
        assert not re.search(r"https?:|//[a-z]|url\(|fetch|XMLHttpRequest|import\(", static.read_text()), static


def entries_of(page: Path) -> list[dict]:
    p = parse_page(page)
    return [a for t, a in p.tags if t == "li" and "data-rank" in a]


def texts(page: Path, cls: str) -> list[str]:
    return re.findall(rf'<span class="{cls}"[^>]*>([^<]*)</span>', page.read_text())


def test_channel_pages_show_the_scans_numbers(atlas, net, data):
    # an independent scan, not the atlas's file; batches of 1 as the atlas's, so bitwise the same forwards
    topk = scan_top_k(net, data, LAYERS, k=9, batch_size=1, progress=False)
    for layer in LAYERS:
        rf = receptive_field(net, layer)
        saved = TopK.load(atlas.out / "scans" / f"topk-{layer}.pt")
        assert torch.equal(saved.values[layer], topk.values[layer]) and torch.equal(saved.images[layer],
                                                                                    topk.images[layer])
        index = (atlas.out / "index.html").read_text()
        for c in atlas.channels[layer]:
            page = atlas.out / layer / f"{c}.html"
            got = entries_of(page)
            want = topk.entries(layer, c)
            assert len(got) == len(want) == 9
            for rank, (a, (v, i, (r, col))) in enumerate(zip(got, want, strict=False), 1):
                assert int(a["data-rank"]) == rank
                assert float(a["data-activation"]) == v  # repr of the float64: exact
                assert (int(a["data-image"]), int(a["data-row"]), int(a["data-col"])) == (i, r, col)
                assert [int(s) for s in a["data-box"].split(",")] == list(rf.box(r, col))
            assert texts(page, "act") == [f"{v:.4g}" for v, _, _ in want]
            labels = re.findall(r'<a class="source" href="#view-\d+">([^<]*)</a>', page.read_text())
            assert labels == [data.label(i) for _, i, _ in want]
            # the index's cell shows the strongest activation
            cell = re.search(rf'id="{layer}-{c}">.*?data-value="([^"]+)">([^<]+)<', index, re.S)
            assert float(cell.group(1)) == want[0][0] and cell.group(2) == f"{want[0][0]:.4g}"
            sidecar = json.loads((atlas.out / layer / "channels.json").read_text())
            record = next(ch for ch in sidecar["channels"] if ch["channel"] == c)
            assert [e["activation"] for e in record["entries"]] == [v for v, _, _ in want]


def brute_force_stats(net, data, layer, top, bins):
    """Every activation of every image, one image at a time, binned with numpy (float64)."""
    values = np.concatenate([
        dn.Deconvnet(net).record(data[i][0][None], [layer]).activations[layer][0].double().flatten(1).numpy()
        for i in range(len(data))], axis=1)  # (C, images x units)
    maxima = values.reshape(len(top), len(data), -1).max(2)  # (C, images)

    def histogram(v):
        counts = np.zeros((len(top), bins), dtype=np.int64)
        for c in range(len(top)):
            idx = np.minimum(np.floor(v[c][v[c] > 0] / top[c] * bins), bins - 1).astype(np.int64)
            counts[c] = np.bincount(idx, minlength=bins)
        return counts, (v <= 0).sum(1)

    return (*histogram(values), *histogram(maxima), values)


def test_histograms_and_moments_equal_brute_force(atlas, net, data):
    layer = "conv4_2"
    topk = TopK.load(atlas.out / "scans" / f"topk-{layer}.pt")
    top = topk.values[layer][:, 0].numpy()
    assert (top <= 0).any()  # some channels never fire: their bins span (0, 1] (deconvnet.atlas.stats)
    units, units_nonpos, image_max, image_nonpos, values = brute_force_stats(net, data, layer, np.where(top > 0, top,
                                                                                                        1.0), 32)
    assert np.array_equal(top, values.max(1))  # the scan's top-1 is the dataset maximum
    for c in atlas.channels[layer]:
        page = (atlas.out / layer / f"{c}.html").read_text()
        units_svg, images_svg = re.findall(r'<figure class="hist (?:units|images)">(.*?)</figure>', page, re.S)
        got_units = [int(v) for v in re.findall(r'data-count="(\d+)"', units_svg)]
        got_images = [int(v) for v in re.findall(r'data-count="(\d+)"', images_svg)]
        assert got_units == [int(units_nonpos[c]), *units[c].tolist()]
        assert got_images == [int(image_nonpos[c]), *image_max[c].tolist()]
        assert sum(got_units) == values.shape[1] and sum(got_images) == len(data)
        shown = [float(v) for v in re.findall(r'data-value="([^"]+)"',
                                              page.split('class="facts"')[1].split("</dl>")[0])]
        mx, mean, std, active, images_active = shown
        v = values[c]
        assert mx == v.max()
        # sums in another order than numpy's: equal to float64 round-off
        assert mean == pytest.approx(v.mean(), rel=1e-12, abs=1e-15)
        assert std == pytest.approx(v.std(), rel=1e-9)
        assert active == (v > 0).mean()
        assert images_active == 1 - image_nonpos[c] / len(data)


def test_channel_stats_resumes_to_the_same_result(net, data, tmp_path):
    class Failing(torch.utils.data.Dataset):
        def __init__(self, fail_at):
            self.fail_at = fail_at

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            if i == self.fail_at:
                raise KeyboardInterrupt
            return data[i]

    tops = {"conv3_1": torch.linspace(0.5, 2, net.channels["conv3_1"])}
    whole = channel_stats(net, data, tops, bins=8, batch_size=4, progress=False)["conv3_1"]
    ckpt = tmp_path / "stats.pt"
    with pytest.raises(KeyboardInterrupt):
        channel_stats(net, Failing(9), tops, bins=8, batch_size=4, checkpoint=ckpt, progress=False)
    assert ckpt.is_file()
    resumed = channel_stats(net, data, tops, bins=8, batch_size=4, checkpoint=ckpt, progress=False)["conv3_1"]
    for key in ("units", "units_nonpos", "image_max", "image_nonpos", "sum", "sum_sq", "min"):
        assert torch.equal(getattr(whole, key), getattr(resumed, key)), key
    assert whole.n_units == resumed.n_units == len(data) * 16 * 16  # 64 px: conv3_1's map is 16x16


def test_tiles_are_figure2s_projections_beside_their_patches(atlas, net, data):
    """The atlas projects grouped by image; figure2.feature_tiles one target per image: same crops."""
    layer = "conv4_2"
    topk = TopK.load(atlas.out / "scans" / f"topk-{layer}.pt")
    channels = atlas.channels[layer][:1]
    for tiles in feature_tiles(net, data, topk, layer, channels, progress=False):
        for rank, (proj, patch) in enumerate(zip(tiles.projections, tiles.patches, strict=False)):
            pair = np.asarray(Image.open(atlas.out / layer / "tiles" / f"{tiles.channel}_{rank}.png"))
            r = proj.shape[-1]
            want_proj = np.clip(np.round(scale_for_display(proj) * 255), 0, 255).astype(np.uint8)
            want_patch = np.clip(np.round(patch.permute(1, 2, 0).double().numpy() * 255), 0, 255).astype(np.uint8)
            # forwards and deconv walks batched differently here and there: float32 round-off can move a
            # pixel across a rounding boundary, by one gray level at most
            assert np.abs(pair[:, :r].astype(int) - want_proj).max() <= 1
            assert (pair[:, :r] == want_proj).mean() > 0.99
            assert np.array_equal(pair[:, -r:], want_patch)
            assert (pair[:, r:-r] == 255).all()  # the white gap


def tree(out: Path) -> dict[str, bytes]:
    """Every file of the website (scans/ apart), pages with the scan date blanked."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_file() and rel.parts[0] != "scans":
            content = p.read_bytes()
            if p.suffix == ".html":
                content = re.sub(rb'<time datetime="[^"]*">[^<]*</time>', b"<time></time>", content)
            files[rel.as_posix()] = content
    return files


class Interrupting(torch.utils.data.Dataset):
    """The demo collection, raising KeyboardInterrupt (as Ctrl-C) at the n-th item read of a run."""

    def __init__(self, data):
        self.data, self.calls, self.fail_at = data, 0, None

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.data[i]

    def __getattr__(self, name):  # rgb, label, group, describe
        return getattr(self.__dict__["data"], name)


def test_an_interrupted_build_resumes_to_the_same_files(net, tmp_path, monkeypatch):
    data = demo_collection(preprocessing=net.preprocessing, size=64, n=12)
    kwargs = dict(features=[0, 5, 7], batch_size=4, progress=False)  # jpeg: the default format
    monkeypatch.setenv("DECONVNET_CACHE", str(tmp_path / "ref-cache"))  # else the build below finds its scan there
    ref = build_atlas(net, data, ["conv3_1"], tmp_path / "ref", **kwargs)
    monkeypatch.setenv("DECONVNET_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "resumed"
    wrapped = Interrupting(data)
    scans = out / "scans"
    # 1: Ctrl-C during the scan (in its 2nd batch): the scan's checkpoint is kept, nothing else exists
    wrapped.fail_at = 6
    with pytest.raises(KeyboardInterrupt):
        build_atlas(net, wrapped, ["conv3_1"], out, **kwargs)
    assert list(scans.glob("scan-*.pt")) and not (scans / "topk-conv3_1.pt").exists()
    # 2: the scan resumes (8 items left), then Ctrl-C in the 2nd batch of the statistics
    wrapped.calls, wrapped.fail_at = 0, 8 + 6
    with pytest.raises(KeyboardInterrupt):
        build_atlas(net, wrapped, ["conv3_1"], out, **kwargs)
    assert (scans / "topk-conv3_1.pt").exists() and list(scans.glob("stats-*.pt")) \
        and not (scans / "stats-conv3_1.pt").exists()
    # 3: the statistics resume (8 items), then Ctrl-C in the 2nd batch of images of the projections
    wrapped.calls, wrapped.fail_at = 0, 8 + 4 + 2
    with pytest.raises(KeyboardInterrupt):
        build_atlas(net, wrapped, ["conv3_1"], out, **kwargs)
    done = list((out / "conv3_1" / "tiles").glob("*.jpg"))
    assert 0 < len(done) < 27 and not (out / "index.html").exists()
    # 4: to the end
    wrapped.calls, wrapped.fail_at = 0, None
    resumed = build_atlas(net, wrapped, ["conv3_1"], out, **kwargs)
    assert resumed.projected == 27 - len(done)
    a, b = tree(ref.out), tree(out)
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []


def test_a_rerun_adds_layers_and_reuses_the_work_done(net, tmp_path):
    data = demo_collection(preprocessing=net.preprocessing, size=64, n=8)
    out = tmp_path / "atlas"
    first = build_atlas(net, data, ["conv3_1"], out, features=2, k=3, progress=False)
    tile = next((out / "conv3_1" / "tiles").iterdir())
    stamp = tile.stat().st_mtime_ns
    second = build_atlas(net, data, ["conv4_1"], out, features=2, k=3, progress=False)
    assert second.layers == ["conv3_1", "conv4_1"] and second.channels["conv3_1"] == first.channels["conv3_1"]
    assert second.projected == 2 * 3 and tile.stat().st_mtime_ns == stamp  # conv3_1's work is not redone
    index = (out / "index.html").read_text()
    assert 'id="conv3_1"' in index and 'id="conv4_1"' in index
    third = build_atlas(net, data, ["conv3_1", "conv4_1"], out, features=2, k=3, progress=False)
    assert third.projected == 0 and third.channels == second.channels
    # more channels for a layer: only theirs are projected
    fourth = build_atlas(net, data, ["conv4_1"], out, features=[0, 1, 2, 3], k=3, progress=False)
    assert set(fourth.channels["conv4_1"]) == set(second.channels["conv4_1"]) | {0, 1, 2, 3}
    assert fourth.projected == 3 * len(set(fourth.channels["conv4_1"]) - set(second.channels["conv4_1"]))
    # an atlas of other settings may not be mixed in
    with pytest.raises(ValueError, match="was built with another k"):
        build_atlas(net, data, ["conv3_1"], out, features=2, k=4, progress=False)


# --- the command ----------------------------------------------------------------------------------------

def test_atlas_command(tmp_path, capsys):
    out = tmp_path / "atlas"
    code = main(["atlas", "--arch", "vgg11", "--weights", "random", "--layers", "conv2_1", "--features", "2",
                 "--k", "4", "--limit", "8", "--crop", "64", "--out", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "conv2_1 (2 channels)" in stdout and f"open {out / 'index.html'}" in stdout and "MB in" in stdout
    pages = sorted((out / "conv2_1").glob("*.html"))
    assert len(pages) == 2 and len(entries_of(pages[0])) == 4
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("args, message", [
    (["--layers", "conv9_9"], "unknown layer 'conv9_9'"),
    (["--layers", "fc6"], "layer 'fc6' has no spatial map"),
    (["--features", "0"], "--features 0 must be at least 1"),
    (["--features", "some"], "'some' is not a number of channels or all"),
    (["--k", "0"], "--k 0 must be at least 1"),
])
def test_atlas_command_errors(args, message, tmp_path, capsys):
    code = main(["atlas", "--arch", "vgg11", "--weights", "random", "--out", str(tmp_path / "a"), "--quiet"] + args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_atlas_command_refuses_a_folder_it_cannot_or_should_not_write(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for out, message in ((tmp_path / "file" / "atlas", "cannot write the atlas to"),
                         (tmp_path / "notes", "holds no atlas")):
        code = main(["atlas", "--arch", "vgg11", "--weights", "random", "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and str(out) in err, err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


# --- a real browser -------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def check_loaded(driver, url):
    """Load a page: no console errors, every image decoded (lazy ones too), nothing fetched but files."""
    driver.get(url)
    problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    # lazy images load when scrolled to: make them eager and wait for every one to decode or fail
    broken = driver.execute_async_script(BROKEN_IMAGES_JS)
    problems += [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems
    assert broken == []
    # every request the page made (the DevTools log): files, no network
    requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith("file://") for u in urls), urls
    return driver.execute_script("return document.images.length")


@pytest.mark.browser
def test_in_a_browser(browser, atlas, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = atlas.out.resolve()
    shots = Path(os.environ.get("DECONVNET_SCREENSHOTS", tmp_path))
    n = check_loaded(browser, (out / "index.html").as_uri())
    assert n == sum(len(c) for c in atlas.channels.values())
    browser.save_screenshot(str(shots / "atlas_index.png"))

    layer = LAYERS[1]
    first, second = atlas.channels[layer][:2]
    n = check_loaded(browser, (out / layer / f"{first}.html").as_uri())
    assert n == 9 + 9  # the pairs, and the whole images of the (hidden) enlarged views
    browser.save_screenshot(str(shots / "atlas_channel.png"))
    # the arrow keys move between channels
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    deadline = time.time() + 10
    while not browser.current_url.endswith(f"/{layer}/{second}.html") and time.time() < deadline:
        time.sleep(0.05)
    assert browser.current_url.endswith(f"/{layer}/{second}.html")
    assert browser.find_element(By.TAG_NAME, "h1").text.endswith(str(second))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    deadline = time.time() + 10
    while not browser.current_url.endswith(f"/{layer}/{first}.html") and time.time() < deadline:
        time.sleep(0.05)
    assert browser.current_url.endswith(f"/{layer}/{first}.html")
    # the whole image with its receptive field opens on a click, and Escape closes it
    view = browser.find_element(By.ID, "view-1")
    assert not view.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#e1 a.source").click()
    assert view.is_displayed() and browser.find_element(By.CSS_SELECTOR, "#view-1 .rf").is_displayed()
    browser.save_screenshot(str(shots / "atlas_view.png"))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert not view.is_displayed() and browser.current_url.endswith("#e1")
    # jump by channel number; a channel the atlas lacks gets a message
    box = browser.find_element(By.CSS_SELECTOR, "form.jump input")
    missing = next(c for c in range(net_channels(layer)) if c not in atlas.channels[layer])
    box.send_keys(str(missing), Keys.ENTER)
    assert "not in this atlas" in browser.find_element(By.CSS_SELECTOR, "form.jump output").text
    box.clear()
    box.send_keys(str(second), Keys.ENTER)
    deadline = time.time() + 10
    while not browser.current_url.endswith(f"/{layer}/{second}.html") and time.time() < deadline:
        time.sleep(0.05)
    assert browser.current_url.endswith(f"/{layer}/{second}.html")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def net_channels(layer):
    return {"conv3_1": 256, "conv4_2": 512}[layer]






# --- 1 and 11. the atlas: escaped pages, every file inside --out --------------------------------------------------
def test_atlas_pages_escape_names_and_layers_named_as_paths_stay_inside_out(tmp_path):
    from collections import OrderedDict

    from deconvnet.atlas import build_atlas
    from deconvnet.atlas.build import layer_folder
    from deconvnet.data import ImageFolder

    outside = tmp_path / "outside"
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("c1", nn.Conv2d(3, 3, 3, padding=1)), (str(outside), nn.ReLU()),
                                       ("a/b", nn.MaxPool2d(2))]))
    net = dn.wrap(model)
    net.provenance["weights"] = HOSTILE
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        _photo(i, (36, 36)).save(folder / (HOSTILE if i == 0 else f"{i}.png"))
    data = ImageFolder(folder, preprocessing=net.preprocessing, resize=32, crop=32)
    out = tmp_path / "atlas"
    build_atlas(net, data, [str(outside), "a/b"], out, k=2, progress=False)
    assert not outside.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "images"]
    written = [p.resolve() for p in out.rglob("*")]
    assert written and all(out.resolve() in p.parents for p in written)
    pages = [p.read_text() for p in out.rglob("*.html")]
    assert len(pages) == 1 + 3 + 3  # the index, a page per channel of both layers
    assert all("<img src=x" not in page for page in pages)
    assert any("&lt;img src=x onerror=alert(document.domain)&gt;.png" in page for page in pages)
    # the pages link what was written
    index = (out / "index.html").read_text()
    for layer in (str(outside), "a/b"):
        assert (out / layer_folder(layer) / "channels.json").is_file() \
            and f'href="{layer_folder(layer)}/0.html"' in index


def test_layer_folders_are_one_plain_component():
    from deconvnet.atlas.build import layer_folder

    assert [layer_folder(n) for n in ("conv5_3", "features.28", "layer3")] == ["conv5_3", "features.28", "layer3"]
    names = ["/abs/path", "..", "../x", "a/b", "a b", ".hidden", "", "a\\b"]
    folders = [layer_folder(n) for n in names]
    assert len(set(folders)) == len(names)
    assert all("/" not in f and "\\" not in f and ".." not in f and not f.startswith(".") and f for f in folders)


@pytest.fixture(scope="module")
def resnet18(resnet18_net):
    return resnet18_net


@pytest.fixture(scope="module")
def googlenet(googlenet_net):
    return googlenet_net


@pytest.mark.parametrize("arch, layers", [("resnet18", ["layer2", "layer3"]), ("googlenet", ["inception3a"])])
def test_atlas_on_graphs_shows_figure2s_tiles(arch, layers, resnet18, googlenet, tmp_path):
    """The atlas on a graph: its tiles are Figure 2's projections (another path through the engine:
    ``project_many``) beside their patches."""
    net = {"resnet18": resnet18, "googlenet": googlenet}[arch]
    data = demo_collection(preprocessing=net.preprocessing, size=64, n=6)
    atlas = build_atlas(net, data, layers, tmp_path / "site", k=3, features=2, select="strongest",
                        image_format="png", batch_size=2, progress=False)
    assert no_forward_hooks(net)
    assert atlas.layers == layers
    for layer in layers:
        topk = TopK.load(atlas.out / "scans" / f"topk-{layer}.pt")
        for tiles in feature_tiles(net, data, topk, layer, atlas.channels[layer][:1], progress=False):
            for rank, (proj, patch) in enumerate(zip(tiles.projections, tiles.patches, strict=False)):
                pair = np.asarray(Image.open(atlas.out / layer / "tiles" / f"{tiles.channel}_{rank}.png"))
                r = proj.shape[-1]
                want = np.clip(np.round(scale_for_display(proj) * 255), 0, 255).astype(np.uint8)
                assert np.abs(pair[:, :r].astype(int) - want).max() <= 1  # float32 round-off: one gray level
                assert (pair[:, :r] == want).mean() > 0.99
                assert np.array_equal(pair[:, -r:], np.clip(np.round(patch.permute(1, 2, 0).double().numpy() * 255), 0,
                                                            255).astype(np.uint8))
        assert (atlas.out / layer / f"{atlas.channels[layer][0]}.html").is_file()
