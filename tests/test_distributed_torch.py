"""The distributed PyTorch adapter (refimpl/adapters/torch_distributed/) against the oracle.

Skipped, visibly, without torch. A framework test: the slow tier (``-m slow``) as a whole.

- the pieces in this process, no rank started: the case as a module, the pipeline's
  layout and layout map, the batch split, the rules the planted bugs change (the global
  norm's count of a tied copy among them), what ``train_steps`` refuses before any rank
  starts, and every engine on a one-rank gloo group, gradients and training steps (their
  formulas, not yet their collectives);
- the real thing, N local processes: every catalogue case in every mode and dtype, every
  step case in every mode and dtype, the planted bugs failing where they must (naming the
  tensor, and on a step case the first step) and nowhere else, FSDP's refusal as *not
  expressible*, three ranks, a rank that hangs or dies as a failed row, and ``torchrun`` on
  one and on two "nodes" (the commands of docs/distributed.md).
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from adapter_reference import assert_conforms  # noqa: E402

from refimpl import SGD, Adam, ClipGradNorm  # noqa: E402
from refimpl.adapters import micro_batches, plan_case  # noqa: E402
from refimpl.adapters import torch_distributed as td  # noqa: E402
from refimpl.adapters.torch_distributed import planted  # noqa: E402
from refimpl.adapters.torch_distributed._data_parallel import (  # noqa: E402
    HOOKS,
    rematerialise,
    synchronises,
)
from refimpl.adapters.torch_distributed._jobs import GradientJob, run_gradient_job  # noqa: E402
from refimpl.adapters.torch_distributed._modules import CaseModule  # noqa: E402
from refimpl.adapters.torch_distributed._pipeline import (  # noqa: E402
    counted_in_norm,
    global_norm,
    logical_order,
    pipeline_layout,
)
from refimpl.adapters.torch_distributed._ranks import shard  # noqa: E402
from refimpl.testing import NotExpressible, conform  # noqa: E402
from refimpl.testing.cases import all_cases, get_case  # noqa: E402
from refimpl.testing.cases.steps import with_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = all_cases()
STEP_CASES = [case for case in CASES if case.kind == "steps"]
#: The kinds issue 22 names: every such case must pass in every mode.
SHARING_KINDS = ("tied", "shared", "sequence", "siamese", "microbatch")


# --- default tier: the pieces, in this process ---------------------------------------------

def test_only_the_last_micro_batch_synchronises():
    assert [synchronises(i, 4) for i in range(4)] == [False, False, False, True]
    assert synchronises(0, 1)
    # The planted rule (FunASR #3472) synchronises the first and leaves the last local.
    assert [planted.synchronises_first(i, 4) for i in range(4)] == [True, False, False, False]


def test_to_empty_unties_and_rematerialise_ties_again():
    case = get_case("sequence-tied-lm")              # Embedding, RNN, Dense reading embed
    plan = plan_case(case.config)
    shapes = {key: value.shape for key, value in case.params.items()}
    embedding, _, output = CaseModule(plan, shapes, torch.float64).models[0]
    assert embedding.weight is output.weight and embedding.weight.device.type == "meta"
    for hook, tied in ((rematerialise, True), (planted.rematerialise_without_tie, False)):
        case_module = CaseModule(plan, shapes, torch.float64)
        hook(case_module)
        embedding, output = case_module.models[0][0], case_module.models[0][2]
        assert embedding.weight.device.type == "cpu"
        assert (embedding.weight is output.weight) == tied, hook.__name__
        # The values load into every slot alike: the tie's loss shows in gradients only.
        case_module.load(case.params)
        assert torch.equal(embedding.weight, output.weight)


def test_the_pipeline_puts_a_copy_of_the_tied_embedding_on_both_stages():
    layout = pipeline_layout(plan_case(get_case("sequence-tied-lm").config), 2)
    first, last = layout.stages
    assert [step.type for step in first.parts[0].layers] == ["Embedding"]
    assert [step.type for step in last.parts[0].layers] == ["RNN", "Dense"]
    assert layout.holders["embed.weight"] == (0, 1)
    assert layout.holders["out.bias"] == (1,) and layout.holders["rnn.weight_hh"] == (1,)
    # The tied autoencoder's decoder holds the encoder's weight as its own (out, in) weight.
    layout = pipeline_layout(plan_case(get_case("shared-tied-autoencoder").config), 2)
    assert layout.holders["enc.weight"] == (0, 1)
    assert layout.stages[0].held["enc.weight"] is False
    assert layout.stages[1].held["enc.weight"] is True
    assert layout.stages[1].parts[0].layers[0].params["weight"].transpose is False
    # Three stages: the outer encoder and decoder on the first and last, a subgroup of two.
    layout = pipeline_layout(plan_case(get_case("shared-deep-tied-autoencoder").config), 3)
    assert layout.holders["enc1.weight"] == (0, 2) and layout.holders["enc2.weight"] == (1, 2)


def test_a_penalty_term_is_computed_once_on_its_first_parameters_stage():
    layout = pipeline_layout(plan_case(get_case("tied-soft-l1-transposed").config), 2)
    assert [len(stage.terms) for stage in layout.stages] == [1, 0]
    # The pulled weight of the last stage has a copy on the first, held as the term reads it.
    assert layout.holders["B:dec.weight"] == (0, 1)
    assert layout.stages[0].held["B:dec.weight"] is True


def test_the_layout_map_reads_a_transposed_copy_in_the_parameters_layout():
    parameter = torch.arange(6.0).reshape(2, 3)
    copy = parameter.T.contiguous()                  # held as (3, 2)
    order = logical_order((3, 2), True)
    assert torch.equal(copy.view(-1)[order], parameter.reshape(-1))
    assert torch.equal(logical_order((2, 3), False), torch.arange(6))
    # The planted raw order reads the copy's storage as if it were the parameter's.
    assert not torch.equal(copy.view(-1), parameter.reshape(-1))


def test_each_rank_holds_a_contiguous_share_and_an_empty_rank_borrows_with_weight_zero():
    case = get_case("microbatch-mlp")                # micro-batches of 3, 1 and 3 examples
    plan = plan_case(case.config)
    batches = micro_batches(plan, case.inputs)
    parts = [shard(plan, batches[0], rank, 2) for rank in range(2)]
    assert [part.counts for part in parts] == [(2,), (1,)]
    assert [part.shares for part in parts] == [(2 / 3,), (1 / 3,)]
    np.testing.assert_array_equal(np.concatenate([part.inputs["x"] for part in parts]),
                                  batches[0].inputs["x"])
    lonely = [shard(plan, batches[1], rank, 2) for rank in range(2)]
    assert [part.counts for part in lonely] == [(1,), (0,)]
    assert lonely[1].shares == (0.0,)
    np.testing.assert_array_equal(lonely[1].inputs["y"], batches[1].inputs["y"][:1])


def test_the_builders_settings_are_checked_before_any_rank_starts(monkeypatch):
    config = get_case("mlp-tanh-ce").config
    monkeypatch.setenv(td.WORLD_SIZE_VARIABLE, "3")
    assert td.ddp(config).world_size == 3
    assert td.build(config, mode="ddp", world_size=2).world_size == 2
    monkeypatch.setenv(td.WORLD_SIZE_VARIABLE, "three")
    with pytest.raises(ValueError, match="REFIMPL_WORLD_SIZE: expected an integer"):
        td.ddp(config)
    monkeypatch.delenv(td.WORLD_SIZE_VARIABLE)
    assert td.ddp(config).world_size is None          # the default, or torchrun's
    with pytest.raises(ValueError, match="mode: expected one of"):
        td.build(config, mode="zero")
    with pytest.raises(ValueError, match="world_size"):
        td.make_builder("ddp", world_size=0)
    with pytest.raises(ValueError, match="fsdp_groups"):
        td.make_builder("ddp", fsdp_groups="layer")
    with pytest.raises(TypeError, match="hooks: expected a .*_pipeline.Hooks"):
        td.build(config, mode="pipeline", hooks=HOOKS)
    with pytest.raises(NotExpressible, match="tf32 needs a CUDA device"):
        td.fsdp(config, "tf32")
    with pytest.raises(ValueError, match="params"):
        td.ddp(config)({}, {})
    assert "world_size=4" in td.make_builder("fsdp", world_size=4).__qualname__


@pytest.fixture(scope="module")
def one_rank():
    """A gloo process group of one rank in this process, for the engines' arithmetic."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _in_process(mode, hooks=None, **options):
    """``build``'s implementation, its job run here on the one-rank group."""
    def build(config, dtype):
        implementation = td.build(config, dtype, mode=mode, hooks=hooks, **options)

        def impl(params, inputs):
            return run_gradient_job(GradientJob(
                mode, implementation.plan, implementation.dtype, params, inputs,
                implementation.hooks, implementation.options))

        return impl
    return build


ONE_RANK_CASES = ["sequence-tied-lm", "shared-tied-autoencoder", "tied-soft-l1-transposed",
                  "microbatch-tied-hard", "microbatch-anchored", "siamese-contrastive-shared-tower"]


@pytest.mark.parametrize("mode", td.MODES)
def test_every_engine_on_one_rank_matches_the_oracle(one_rank, mode):
    report = conform(_in_process(mode), cases=ONE_RANK_CASES, dtypes=["float64"])
    assert report.ok and report.counts()["pass"] == len(ONE_RANK_CASES), report.table()


def test_the_tie_dropped_fails_even_on_one_rank_naming_the_embedding(one_rank):
    hooks = HOOKS._replace(rematerialise=planted.rematerialise_without_tie)
    report = conform(_in_process("fsdp", hooks), cases=["sequence-tied-lm", "sequence-untied-lm"],
                     dtypes=["float64"])
    tied, untied = report.rows
    assert (tied.outcome, tied.tensor) == ("fail", "gradient 'embed.weight'"), report.table()
    assert untied.outcome == "pass", report.table()


def test_fsdp_refusing_a_tie_across_groups_is_not_expressible(one_rank):
    report = conform(_in_process("fsdp", fsdp_groups="layer"),
                     cases=["sequence-tied-lm", "mlp-tanh-ce"], dtypes=["float64"])
    tied, untied = report.rows
    assert tied.outcome == "not expressible", report.table()
    assert "FSDP2" in tied.detail and "already managed by another FSDP group" in tied.detail
    assert untied.outcome == "pass", report.table()


def test_the_global_norm_counts_a_tied_copy_once_and_the_planted_rule_on_every_stage():
    # The last stage of the tied LM holds a copy of embed.weight (its output layer) besides
    # its own RNN and output bias: only the first holder counts the embedding.
    layout = pipeline_layout(plan_case(get_case("steps-tied-lm-adamw-clip").config), 2)
    rng = np.random.default_rng(0)
    grads = {key: torch.tensor(rng.standard_normal(3)) for key in layout.stages[1].held}

    def stage(number):
        held = layout.stages[number].held
        return SimpleNamespace(stage=number, layout=layout, leaves=dict.fromkeys(held),
                               gradient=lambda key: grads[key])

    def counted(rule, number):
        tensors = rule(stage(number))
        return {key for key in grads if any(tensor is grads[key] for tensor in tensors)}

    assert "embed.weight" in layout.stages[1].held
    assert counted(counted_in_norm, 1) == set(grads) - {"embed.weight"}
    assert counted(planted.count_every_copy, 1) == set(grads)
    assert counted(counted_in_norm, 0) == counted(planted.count_every_copy, 0) == set(grads) & {
        key for key in layout.stages[0].held}


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_the_global_norm_on_one_rank_is_torchs_total_norm(one_rank, norm_type):
    rng = np.random.default_rng(1)
    grads = [torch.tensor(rng.standard_normal(shape)) for shape in ((3, 2), (4,), (1,))]
    expected = torch.nn.utils.get_total_norm(grads, norm_type)
    assert torch.allclose(global_norm(grads, norm_type, torch.float64), expected,
                          rtol=1e-14, atol=0)
    # A stage counting nothing adds nothing (and reads no parameter).
    assert global_norm([], norm_type, torch.float64).item() == 0.0


def test_train_steps_refuses_before_any_rank_starts(monkeypatch):
    def no_rank(*arguments):
        raise AssertionError("a rank was asked")

    monkeypatch.setattr(td, "_run", no_rank)
    case = get_case("steps-tied-soft-adam")
    with pytest.raises(ValueError, match="train_steps: this configuration has no 'steps'"):
        td.ddp(get_case("sequence-tied-lm").config).train_steps({}, [])
    impl = td.pipeline(case.config)
    with pytest.raises(ValueError, match="params"):
        impl.train_steps({}, list(case.batches))
    with pytest.raises(ValueError, match="batches: expected a list of 3 input dicts"):
        impl.train_steps(case.params, list(case.batches[:2]))
    with pytest.raises(TypeError, match=r"batches\[1\]: expected a dict"):
        impl.train_steps(case.params, [case.batches[0], 7, case.batches[2]])
    for optimizer, clip, reason in ((Adam(lr=0.01, eps_root=1e-8), None, "no eps_root"),
                                    (Adam(lr=0.01, bias_correction=False), None,
                                     "always corrects"),
                                    (SGD(lr=0.1), ClipGradNorm(0.1, eps=0.0),
                                     "total_norm \\+ 1e-6")):
        custom = with_optimizer(case, optimizer, clip, name="custom")
        for mode in td.MODES:
            with pytest.raises(NotExpressible, match=reason):
                getattr(td, mode)(custom.config).train_steps(custom.params,
                                                             list(custom.batches))
    row, = conform(td.fsdp, cases=[with_optimizer(case, Adam(lr=0.01, eps_root=1e-8),
                                                  name="custom")], dtypes=["float64"]).rows
    assert row.outcome == "not expressible" and "no eps_root" in row.detail, row


@pytest.fixture
def ranks_here(one_rank, monkeypatch):
    """Every job of the builders run in this process, on the one-rank group."""
    monkeypatch.setattr(td, "_run", lambda job, world_size, timeout:
                        td._JOB_FUNCTIONS[type(job)](job))


ONE_RANK_STEP_CASES = ["steps-tied-lm-adamw-clip", "steps-micro-batches-adam-clip",
                       "steps-shared-autoencoder-sgd-decay"]


@pytest.mark.parametrize("mode", td.MODES)
def test_every_engine_on_one_rank_runs_the_training_steps(ranks_here, mode):
    report = conform(getattr(td, mode), cases=ONE_RANK_STEP_CASES, dtypes=["float64"])
    assert report.ok and report.counts()["pass"] == len(ONE_RANK_STEP_CASES), report.table()


def test_the_tie_dropped_fails_the_first_step_on_one_rank_naming_the_embedding(ranks_here):
    row, = conform(planted.fsdp_tie_dropped, cases=["steps-tied-lm-adamw-clip"],
                   dtypes=["float64"]).rows
    assert (row.outcome, row.tensor) == ("fail", "step 1: parameter 'embed.weight'"), row
    assert row.detail.startswith("diverges first at step 1 of 4: parameter 'embed.weight'")


# --- slow tier: N local processes --------------------------------------------------------------

slow = pytest.mark.slow


@slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", td.MODES)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_catalogue_case_matches_the_oracle_in_every_mode(case, mode, dtype):
    assert_conforms(getattr(td, mode), case, dtype)


@slow
@pytest.mark.parametrize("mode", td.MODES)
def test_every_step_case_passes_in_every_mode_and_dtype(mode):
    report = conform(getattr(td, mode), cases=STEP_CASES, dtypes=["float64", "float32"])
    assert {row.outcome for row in report.rows} == {"pass"}, report.table()


@slow
@pytest.mark.parametrize("mode", td.MODES)
def test_clipping_by_the_max_and_the_3_norm_over_the_ranks(mode):
    # The catalogue clips by the 2-norm; the stages' norms combine by max and by the sum of
    # |g|^p too. Both clippings are active here (the tied LM's norms at the start: inf 0.47,
    # 3-norm 0.65).
    base = get_case("steps-tied-lm-adamw-clip")
    cases = [with_optimizer(base, base.optimizer(), ClipGradNorm(max_norm, order),
                            name=f"tied-lm-clip-{order}")
             for order, max_norm in (("inf", 0.3), (3.0, 0.4))]
    report = conform(getattr(td, mode), cases=cases, dtypes=["float64"])
    assert {row.outcome for row in report.rows} == {"pass"}, report.table()


#: Per planted bug: cases where it must fail (and the tensor it must name: on a step case at
#: step 1) and cases where it changes nothing and must pass.
PLANTED_ROWS = {
    "fsdp_tie_dropped": ({"sequence-tied-lm": "gradient 'embed.weight'",
                          "shared-tied-autoencoder": "gradient 'enc.weight'",
                          "tied-hard-lasserre-transposed": "gradient 'A:fc1.weight'",
                          "steps-tied-lm-adamw-clip": "step 1: parameter 'embed.weight'"},
                         ("sequence-untied-lm", "steps-tied-soft-adam")),
    "pipeline_reduce_skipped": ({"sequence-tied-lm": "gradient 'embed.weight'",
                                 "shared-cnn-kernel": "gradient 'conv1.bias'",
                                 "tied-soft-l1-transposed": "gradient 'B:dec.weight'",
                                 "steps-tied-lm-adamw-clip": "step 1: parameter 'embed.weight'"},
                                ("microbatch-tied-soft", "steps-tied-hard-sgd-clip")),
    "pipeline_mismatched_layouts": ({"shared-tied-autoencoder": "gradient 'enc.weight'",
                                     "tied-hard-lasserre-transposed": "gradient 'A:fc1.weight'",
                                     "steps-shared-autoencoder-sgd-decay":
                                         "step 1: parameter 'enc.weight'"},
                                    ("sequence-tied-lm", "steps-tied-lm-adamw-clip")),
    "pipeline_norm_counts_copies": ({"steps-tied-lm-adamw-clip": "step 1: gradient norm",
                                     "steps-shared-autoencoder-sgd-decay": "step 1: gradient norm",
                                     "steps-micro-batches-adam-clip": "step 1: gradient norm"},
                                    ("sequence-tied-lm", "shared-tied-autoencoder",
                                     "steps-tied-hard-sgd-clip")),
    "ddp_no_sync_off_by_one": ({"microbatch-mlp": "gradient 'fc2.bias'",
                                "microbatch-tied-hard": "gradient 'A:fc1.weight'",
                                "microbatch-siamese-triplet": "gradient 'fc1.bias'",
                                "steps-micro-batches-adam-clip": "step 1: gradient norm"},
                               ("sequence-tied-lm", "steps-tied-lm-adamw-clip")),
}


@slow
@pytest.mark.parametrize("name", sorted(planted.PLANTED))
def test_each_planted_bug_fails_naming_the_tensor_where_it_bites_and_only_there(name):
    failing, untouched = PLANTED_ROWS[name]
    report = conform(planted.PLANTED[name], cases=[*failing, *untouched],
                     dtypes=["float64", "float32"])
    rows = {(row.case, row.dtype): row for row in report.rows}
    for case, tensor in failing.items():
        row = rows[case, "float64"]
        assert (row.outcome, row.tensor) == ("fail", tensor), report.table()
        if tensor.startswith("step 1: "):
            count = get_case(case).count
            assert row.detail.startswith(f"diverges first at step 1 of {count}: "
                                         f"{tensor.removeprefix('step 1: ')}"), row.detail
        assert rows[case, "float32"].outcome == "fail", report.table()
    for case in untouched:
        assert {rows[case, dtype].outcome for dtype in ("float64", "float32")} == {"pass"}, \
            report.table()


@slow
def test_the_module_example_runs():
    assert doctest.testmod(td).failed == 0


@slow
def test_fsdp_layer_groups_are_refused_by_torch_as_not_expressible():
    builder = td.make_builder("fsdp", fsdp_groups="layer")
    report = conform(builder, cases=["sequence-tied-lm", "shared-cnn-kernel", "mlp-relu-ce"],
                     dtypes=["float64"])
    outcomes = [row.outcome for row in report.rows]
    assert outcomes == ["not expressible", "not expressible", "pass"], report.table()
    assert "already managed by another FSDP group" in report.rows[0].detail


@slow
@pytest.mark.parametrize("mode", td.MODES)
def test_three_ranks(mode):
    cases = ["sequence-tied-lm", "shared-deep-tied-autoencoder", "microbatch-tied-hard",
             "siamese-triplet-cnn", "mlp-batch1-one-feature", "tied-soft-l1-transposed"]
    report = conform(td.make_builder(mode, world_size=3), cases=cases,
                     dtypes=["float64", "float32"])
    assert report.ok and report.counts()["pass"] == 2 * len(cases), report.table()


@slow
@pytest.mark.parametrize("mode", td.MODES)
def test_three_ranks_train(mode):
    # Three stages put the tied LM's embedding on the first and the last (a subgroup of two
    # for the copies' all-reduce, every rank in the norm's).
    cases = ["steps-tied-lm-adamw-clip", "steps-micro-batches-adam-clip",
             "steps-tied-hard-sgd-clip", "steps-siamese-triplet-adamw"]
    report = conform(td.make_builder(mode, world_size=3), cases=cases, dtypes=["float64"])
    assert report.ok and report.counts()["pass"] == len(cases), report.table()


@slow
@pytest.mark.parametrize("hook, error", [
    ("hang_on_rank_1", r"rank 1 did not answer within 5 s \(killed\)"),
    ("die_on_rank_1", r"rank 1 died \(exit status 7\)")])
def test_a_rank_that_hangs_or_dies_is_a_failed_row_and_the_next_case_runs(hook, error):
    import distributed_hooks  # noqa: PLC0415 - torch.distributed is imported above

    hooks = HOOKS._replace(synchronises=getattr(distributed_hooks, hook))

    def build(config, dtype):
        return td.build(config, dtype, mode="ddp", world_size=2, timeout=5, hooks=hooks)

    start = time.monotonic()
    row = conform(build, cases=["mlp-tanh-ce"], dtypes=["float64"]).rows[0]
    assert row.outcome == "fail" and re.search(error, row.detail), row
    assert time.monotonic() - start < 5 + 30          # the timeout, the grace, the kill
    assert conform(td.ddp, cases=["mlp-tanh-ce"], dtypes=["float64"]).ok


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _documented_torchrun() -> list[str]:
    """The ``torchrun`` commands of docs/distributed.md (its lines, joined at ``\\``)."""
    text = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("torchrun ")]


def _torchrun(command: str, node_rank: int, port: int) -> subprocess.Popen:
    """A documented command for this machine: node rank, rendezvous at localhost:port."""
    command = command.replace("HOST:29500", f"127.0.0.1:{port}")
    command = command.replace("--node-rank=NODE", f"--node-rank={node_rank}")
    arguments = shlex.split(command)
    launcher = [sys.executable, "-m", "torch.distributed.run", *arguments[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)


@slow
def test_the_documented_torchrun_commands_run_on_one_machine_and_on_two_nodes():
    commands = _documented_torchrun()
    single = [command for command in commands if "--standalone" in command]
    nodes = [command for command in commands if "--nnodes=2" in command]
    assert single and nodes, commands
    for command, node_count in ((single[0], 1), (nodes[0], 2)):
        port = _free_port()
        launched = [_torchrun(command, node, port) for node in range(node_count)]
        try:
            outputs = [process.communicate(timeout=600)[0] for process in launched]
        finally:
            for process in launched:
                if process.poll() is None:
                    os.killpg(process.pid, 9)
                    process.wait()
        for process, output in zip(launched, outputs, strict=True):
            assert process.returncode == 0, (command, output[-3000:])
            assert re.search(r"rows: \d+ pass, 0 fail", output), (command, output[-3000:])
            # the step cases too: each rank ran their K steps, none was not expressible
            assert re.search(r"\b0 not expressible", output), (command, output[-3000:])
            assert re.search(r"steps-tied-lm-adamw-clip +float64 +pass", output), output[-3000:]
