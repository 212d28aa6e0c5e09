"""What a person reads: numbers readable (no 1.19e+04), tables not cut at 80 columns in a pipe."""

from rich.console import Console

from perftune.cli.campaign import _cell_text
from perftune.cli.common import out_console


def test_lake_numbers_are_readable() -> None:
    assert _cell_text(11900.123456) == "11,900.1"
    assert _cell_text(0.0123456) == "0.0123"
    assert _cell_text(1234567) == "1,234,567"
    assert _cell_text(True) == "True" and _cell_text(None) == "" and _cell_text("x") == "x"


def test_a_piped_console_is_wide() -> None:
    # under pytest stdout is not a terminal: the console must not fall back to 80 columns
    assert not Console().is_terminal
    assert out_console.width >= 160


def test_an_error_hint_keeps_its_brackets(capsys: object) -> None:
    # pip's extras look like rich markup: "pip install 'perftune[quant]'" must reach the user whole
    import pytest

    from perftune.cli.common import handle_errors
    from perftune.errors import ConfigError

    @handle_errors
    def fail() -> None:
        raise ConfigError("llm-compressor [not installed]", hint="pip install 'perftune[quant]'")

    with pytest.raises(SystemExit) as e:
        fail()
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert e.value.code == 2
    assert "llm-compressor [not installed]" in err and "pip install 'perftune[quant]'" in err
