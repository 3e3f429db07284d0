"""Tests of refimpl/cli/memory.py: the `refimpl memory` table (counts checked by hand)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from refimpl.cli.memory import (
    add_memory_arguments,
    convolution_count,
    memory_examples,
    recurrence_count,
    run_memory,
)
from refimpl.nn import RNN, Conv2D, LocallyConnected2D, ParameterCount, Sequential, UnrolledRNN


def parse(argv):
    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    return parser.parse_args(argv)


def counts():
    return dict(memory_examples())


def test_counts_by_hand():
    table = counts()
    # 784*256+256 + 256*128+128 + 128*10+10
    assert table["MLP 784-256-128-10 (nothing shared)"] == ParameterCount(235146, 235146,
                                                                           8 * 235146)
    # the shared fc3 (256*256+256 = 65792) is stored once
    deep = table["MLP 784-256-256-256-10"]
    shared = table["  same, fc3 shares fc2 (identity)"]
    assert shared.uses == deep.unique and deep.unique - shared.unique == 65792
    # tied autoencoder: the decoder weight (784*256) is not stored
    plain = table["autoencoder 784-256-784"]
    tied = table["  same, dec.weight = enc.weight^T"]
    assert plain.unique - tied.unique == 784 * 256 and tied.uses == plain.unique
    # pair: two separate models vs fc1 (784*256+256) stored once
    soft = table["two MLPs 784-256-10 and 784-256-5 (soft tying)"]
    hard = table["  same pair, fc1 hard-shared"]
    separate = (784 * 256 + 256 + 256 * 10 + 10) + (784 * 256 + 256 + 256 * 5 + 5)
    assert soft == ParameterCount(separate, separate, 8 * separate)
    assert hard == ParameterCount(separate - 784 * 256 - 256, separate,
                                  8 * (separate - 784 * 256 - 256))


def test_a_convolution_stores_what_one_position_of_the_locally_connected_layer_stores():
    conv = Conv2D("c", 3, 16, kernel_size=3, padding=1)
    count = convolution_count(conv, (3, 32, 32))
    assert count.unique == 16 * 3 * 3 * 3 + 16
    assert count.uses == 32 * 32 * count.unique
    table = counts()
    local = table["  LocallyConnected2D, same geometry"]
    assert local.unique == local.uses == count.uses


@pytest.mark.parametrize("stride, padding, size", [(2, 0, 9), (1, 0, 5), (3, 1, 7)])
def test_convolution_uses_equal_the_locally_connected_parameters_for_any_geometry(
        stride, padding, size):
    conv = Conv2D("c", 2, 3, kernel_size=3, stride=stride, padding=padding)
    local = LocallyConnected2D("l", 2, 3, kernel_size=3, input_size=size, stride=stride,
                               padding=padding)
    local_total = sum(math.prod(s) for s in local.parameter_shapes().values())
    assert convolution_count(conv, (2, size, size)).uses == local_total


def test_run_memory_prints_the_table(capsys):
    assert run_memory(parse([])) == 0
    out = capsys.readouterr().out
    assert "uses / unique" in out
    assert "1024.00" in out            # the 3x3 kernel used at 32x32 positions
    assert len(out.splitlines()) == 2 + len(memory_examples())


def test_run_memory_json(tmp_path, capsys):
    assert run_memory(parse(["--json", "-"])) == 0
    document = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in document] == [name for name, _ in memory_examples()]
    path = tmp_path / "memory.json"
    assert run_memory(parse(["--json", str(path)])) == 0
    assert json.loads(path.read_text()) == document


def test_tied_language_model_stores_the_table_once():
    table = counts()
    untied = table["LM: Embedding 10000x256, RNN, Dense 256->10000"]
    tied = table["  same, out.weight = embed.weight (tied)"]
    # embed 10000*256, rnn 2*256*256 + 2*256, out 256*10000 + 10000
    total = 10000 * 256 + 2 * 256 * 256 + 2 * 256 + 256 * 10000 + 10000
    assert untied == ParameterCount(total, total, 8 * total)
    # tied: the (V, D) output weight reads the embedding, stored once and used twice
    assert tied == ParameterCount(total - 10000 * 256, total, 8 * (total - 10000 * 256))


def test_an_rnn_stores_what_one_step_of_its_unrolled_twin_stores():
    table = counts()
    rnn = table["RNN 256->256 over 32 steps (per step)"]
    unrolled = table["  UnrolledRNN, a copy per step"]
    per_step = 256 * 256 + 256 * 256 + 256 + 256
    assert rnn.unique == per_step
    # W_hh at step 0 multiplies h_{-1} = 0: 32 copies of everything but 31 of W_hh
    assert rnn.uses == 32 * per_step - 256 * 256 == unrolled.unique == unrolled.uses


@pytest.mark.parametrize("inputs, hidden, steps, bias", [(3, 4, 1, True), (2, 5, 7, False)])
def test_recurrence_uses_equal_the_unrolled_parameters_for_any_size(inputs, hidden, steps,
                                                                    bias):
    rnn = RNN("r", inputs, hidden, bias=bias)
    unrolled = Sequential([UnrolledRNN("r", inputs, hidden, steps, bias=bias)])
    assert recurrence_count(rnn, steps).uses == unrolled.parameter_count().unique
