import pytest

from engines.cli import main
from flowmap.errors import UserError


class NotYourFault(UserError):  # neither ValueError nor OSError: caught for being a UserError
    pass


@pytest.mark.parametrize(
    "argv", [["export", "--engine", "torchscript", "--out", "x.pt"], ["bench", "--engines", "eager"]]
)
def test_user_error_is_one_line_exit_2(argv, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise NotYourFault("checkpoint you gave is wrong")

    monkeypatch.setattr("flowmap.checkpoint.load_model", fail)
    assert main([*argv, "--model", "some.safetensors"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: checkpoint you gave is wrong"]
