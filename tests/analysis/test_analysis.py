"""The analyses' figure script (deconvnet.analysis.make_figures): every figure written, with its numbers, and
every figure of the figure script printable at a page's width."""

import json
from pathlib import Path

import pytest

from conftest import no_forward_hooks, tiny_net


def _print_problems(fig) -> list[str]:
    """What would not print well at a page's width (7 inches): text under 7 pt there, text outside the figure,
    and overlapping titles, captions, legends and panel titles."""
    from matplotlib.text import Text

    problems = []
    shrink = min(1.0, 7.0 / fig.get_figwidth())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    for t in texts:
        if t.get_fontsize() * shrink < 7.0 - 1e-9:
            problems.append(f"{t.get_fontsize() * shrink:.1f} pt at 7 in: {t.get_text()[:40]!r}")
    top_level = {id(t): t for t in [*fig.texts, fig._suptitle,
                                    fig._supxlabel] if t is not None and t.get_text().strip()}
    titled = [a.title for a in fig.axes if a.get_title().strip() and a.get_visible()]
    boxes = [(t.get_text()[:30], t.get_window_extent(renderer)) for t in [*top_level.values(), *titled]]
    boxes += [("legend", lg.get_window_extent(renderer)) for lg in fig.legends]
    page = fig.bbox
    for name, bb in boxes:
        if bb.x0 < page.x0 - 1 or bb.x1 > page.x1 + 1 or bb.y0 < page.y0 - 1 or bb.y1 > page.y1 + 1:
            problems.append(f"outside the figure: {name!r}")
    for i, (na, a) in enumerate(boxes):
        for nb, b in boxes[i + 1 :]:
            if a.overlaps(b) and min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1:
                problems.append(f"overlap: {na!r} / {nb!r}")
    return problems


def _check_print_on_save(monkeypatch) -> dict:
    """Make ``make_figures`` check every figure for print (``_print_problems``) before it is saved."""
    import deconvnet.analysis as analysis

    checked = {}
    save = analysis._save

    def check_then_save(fig, path):
        checked[path.name] = (fig.get_figwidth(), _print_problems(fig))
        return save(fig, path)

    monkeypatch.setattr(analysis, "_save", check_then_save)
    return checked


def _assert_prints(checked: dict) -> None:
    assert set(checked) == {"methods.png", "sanity_curves.png", "sanity_maps.png", "selectivity.png", "invariance.png",
                            "occlusion.png", "filters.png"}
    for name, (width, problems) in checked.items():
        assert width <= 7.0 + 1e-9, name
        assert not problems, (name, problems)


@pytest.mark.slow
def test_every_figure_of_features_only_weights_prints_at_a_page_width(tmp_path, monkeypatch):
    from deconvnet.analysis import make_figures

    checked = _check_print_on_save(monkeypatch)
    make_figures(tmp_path, tiny_net(False), quick=True, progress=False)
    _assert_prints(checked)
    assert "probability" not in json.loads((tmp_path / "occlusion.json").read_text())
    assert "probability" not in json.loads((tmp_path / "invariance.json").read_text())["rotation"]
    sanity = json.loads((tmp_path / "sanity.json").read_text())
    assert sanity["target"] == "conv2_1" and sanity["target_definition"].startswith("conv2_1 before its ReLU")


# --- the figure script's entry ---------------------------------------------------------------------------

@pytest.mark.slow
def test_make_figures_writes_every_figure_and_its_numbers(tiny, tmp_path, monkeypatch):
    from deconvnet.analysis import make_figures

    checked = _check_print_on_save(monkeypatch)  # and each figure prints at a page's width, text >= 7 pt
    paths = make_figures(tmp_path, tiny, quick=True, alexnet=tiny_net(False, seed=4), progress=False)
    _assert_prints(checked)
    names = sorted(p.name for p in paths)
    assert names == sorted(["methods.png", "methods.json", "sanity_curves.png", "sanity_maps.png", "selectivity.png",
                            "sanity.json", "invariance.png", "invariance.json", "occlusion.png", "occlusion.json",
                            "filters.png"])
    for p in paths:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    methods = json.loads((tmp_path / "methods.json").read_text())
    assert methods["weights"] == tiny.describe()
    # Captum's Deconvolution is not a column of the figure, but its cross-check is in the numbers, per row
    assert "deconvolution" not in methods["shown"] and len(methods["rows"]) == 2 * 4  # 2 images x 4 targets
    assert all(row["deconvolution_vs_ours_relative_error"] <= 1e-5 for row in methods["rows"])
    assert methods["cross_check"]["max_relative_error"] == max(r["deconvolution_vs_ours_relative_error"]
                                                               for r in methods["rows"])
    sanity = json.loads((tmp_path / "sanity.json").read_text())
    assert sanity["cascading"]["steps"][0] == "original"
    assert sanity["target"] == "fc8" and sanity["target_definition"].startswith("the class score (logit) fc8")
    assert sanity["cascading"]["mean_similarity"]["deconvnet"]["ssim"]["original"] == pytest.approx(1.0)
    assert set(sanity["selectivity"]["mean_similarity"]) == {"deconvnet", "guided_backprop", "gradient"}
    assert "probability" in json.loads((tmp_path / "invariance.json").read_text())["translation"]
    with pytest.raises(ValueError, match="Hint"):
        make_figures(tmp_path, tiny, quick=True, only=["everything"])
    assert no_forward_hooks(tiny)


@pytest.mark.slow
def test_every_resolution_figure_prints_at_a_page_width(vgg16, tmp_path, monkeypatch):
    """The 7-inch rule holds for every figure the figure script writes, the resolution study's too (its strips
    were 19 inches wide, their footers under 4 pt once printed)."""
    import deconvnet.resolution.figures as resfig

    checked = {}
    save = resfig.save_figure

    def check_then_save(fig, path, *args, **kwargs):
        checked[path.name] = (fig.get_figwidth(), _print_problems(fig))
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(resfig, "save_figure", check_then_save)
    resfig.make_figures(tmp_path, vgg16, quick=True)
    assert set(checked) == {"resolution_conv_matrix.png", "resolution_restore_photo.png",
                            "resolution_restore_relu1_2.png",
                            "resolution_restore_relu4_3.png", "resolution_scores.png", "resolution_checkerboard.png",
                            "resolution_deconvnet_stages.png"}
    for name, (width, problems) in checked.items():
        assert width <= 7.0 + 1e-9, (name, width)
        assert not problems, (name, problems)


@pytest.mark.slow
def test_every_figure_of_the_figure_script_prints_at_a_page_width(tmp_path, monkeypatch, capsys):
    """All of them, as the command writes them: Figure 2 grids, the resolution study and the analyses."""
    import deconvnet.analysis as analysis
    import deconvnet.figure2 as figure2
    import deconvnet.plot as plot
    import deconvnet.resolution.figures as resfig
    from deconvnet.cli import main

    checked = {}

    def checking(save):
        def check_then_save(fig, path, *args, **kwargs):
            checked[Path(path).name] = (fig.get_figwidth(), _print_problems(fig))
            return save(fig, path, *args, **kwargs)
        return check_then_save

    monkeypatch.setattr(analysis, "_save", checking(analysis._save))
    monkeypatch.setattr(resfig, "save_figure", checking(resfig.save_figure))
    monkeypatch.setattr(figure2, "save_figure", checking(figure2.save_figure))
    monkeypatch.setattr(plot, "save_figure", checking(plot.save_figure))  # evolution, correspondence: at call time
    code = main(["figures", "--weights", "random", "--quick", "--quiet", "--limit", "40", "--crop", "48", "--features",
                 "8",
                 "--layers", "conv2_2,conv5_3", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr()
    written = {p.name for p in tmp_path.glob("*.png")}
    assert written == set(checked) and {"top9_vgg16_conv2_2.png", "top9_vgg16_conv5_3.png", "occlusion.png",
                                        "resolution_restore_photo.png"} <= written
    for name, (width, problems) in checked.items():
        assert width <= 7.0 + 1e-9, (name, width)
        assert not problems, (name, problems)
