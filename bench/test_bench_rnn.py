"""An untimed smoke run of the rnn section of ``python -m bench.compare``
(SimpleRNN / GRU / LSTM vs torch eager) at its hidden ``--tiny`` size, one
thread, the c backend only, so the section cannot rot; and its FLOP count
against a count written out by hand for one case."""

import importlib.util

from bench._tiny import run_tiny


def test_rnn_flops_by_hand():
    from fastnn.bench.compare import rnn_flops

    # GRU(2 -> 4) over 3 steps + Dense(4 -> 5): per step 3 gates x 4 units x
    # (2 inputs x (fwd + dW) + 4 hidden x (fwd + dW + dh)) = 12 x 16 = 192
    # multiply-adds; the head 5 x 4 x 3 = 60; 2 FLOP each
    assert rnn_flops("gru", length=3, inputs=2, hidden=4, classes=5) == 2.0 * (3 * 192 + 60)
    assert rnn_flops("lstm", 1, 1, 1, 1) == 2.0 * (4 * 5 + 3)
    assert rnn_flops("rnn", 1, 1, 1, 1) == 2.0 * (5 + 3)


def test_rnn_section_tiny(tmp_path):
    stdout, rows = run_tiny("rnn", tmp_path, timeout=240)
    assert "Recurrent layers" in stdout, stdout[-3000:]
    assert sorted(r["model"] for r in rows) == ["gru", "lstm", "rnn"], rows
    assert all(r["samples/s"]["fastnn-c"] > 0 for r in rows), rows
    if importlib.util.find_spec("torch") is not None:
        assert all(r["samples/s"]["torch"] > 0 for r in rows), rows
