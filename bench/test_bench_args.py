"""The command line of ``python -m bench.compare``: its --rounds, --threads and
--sections checks (parse_args only: nothing is timed)."""

import pytest

from fastnn.bench.compare import parse_args


def test_default_rounds():
    args = parse_args([])
    assert (args.rounds, args.train_rounds, args.sklearn_rounds) == (7, 3, 2)
    assert args.rounds_override is None
    quick = parse_args(["--quick"])
    assert (quick.rounds, quick.train_rounds, quick.sklearn_rounds) == (3, 2, 1)


def test_rounds_override_every_section():
    args = parse_args(["--rounds", "9", "--quick"])
    assert (args.rounds, args.train_rounds, args.sklearn_rounds) == (9, 9, 9)
    assert args.rounds_override == 9


@pytest.mark.parametrize("argv, word", [
    (["--rounds", "0"], "--rounds"),
    (["--rounds", "x"], "--rounds"),
    (["--threads", "a"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--sections", "gemm,nope"], "nope"),
])
def test_bad_arguments_name_the_option(argv, word, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert word in capsys.readouterr().err
