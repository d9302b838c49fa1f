"""Writing files: atomic temporaries, and stale ones removed while live ones are kept."""

from deconvnet.io import atomic_path, remove_stale_temporaries


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / ".top9_vgg16_conv3_3.2147483646.abcd_efg.png.tmp"  # no process has this pid
    dead.write_text("half a figure")
    with atomic_path(tmp_path / "mine.png") as live:
        live.write_text("being written")
        removed = remove_stale_temporaries(tmp_path)
        assert removed == [dead] and live.exists()
    assert (tmp_path / "mine.png").read_text() == "being written"
    assert not list(tmp_path.glob(".*.tmp"))
