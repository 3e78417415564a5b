import io

from audiovit.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_when_not_a_terminal():
    out = io.StringIO()
    assert list(Progress(range(5), "work", stream=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue() == ""


def test_draws_one_line_on_a_terminal():
    out = FakeTerminal()
    bar = Progress(range(3), "epoch 1/2", stream=out)
    for _ in bar:
        bar.set(loss=0.5, acc=0.75)
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert "epoch 1/2" in text and "3/3" in text and "loss=0.5" in text and "acc=0.75" in text
