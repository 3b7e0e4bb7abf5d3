"""The progress bar draws on a terminal only."""

import io

from weightzip.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, enabled=True):
    with progress_bar("work", enabled=enabled, stream=stream) as update:
        for done in range(3):
            update(f"tensor.{done}", done, 3)
        update("", 3, 3)
    return stream.getvalue()


def test_bar_with_item_on_a_terminal():
    assert "work" in _run(_Terminal())


def test_nothing_when_piped_or_disabled():
    assert _run(io.StringIO()) == ""
    assert _run(_Terminal(), enabled=False) == ""
