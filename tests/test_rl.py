"""RL: each reward on hand-built cases, GRPO advantages and loss, two GRPO steps on a real tiny
model, resume after a kill, and `thinkrec train rl` end to end (specialists, unify, mixed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from engine.checkpoint import CheckpointMeta, load_checkpoint
from training.rewards import (Completion, combine, format_reward, level3_match, instruction_following, prefix_credit, rank_hit,
                              satisfies, target_likelihood)
from training.grpo import group_advantages, grpo_loss, target_logprobs
from training.rl import RLArgs, grpo, resolved
from training.rollouts import Prompt, Rollout, build_prompts
from training.unify import best_of_group
from training.teacher import ItemFacts, Request

REASONING = "<|derivation|>(1) space films.<|evolution|>(1) long-term.<|recommendation|>Serve (1). Next item: Sci-Fi."
CODES = {"a": (1, 2, 3), "b": (1, 2, 4), "c": (1, 5, 6), "d": (7, 8, 9), "e": (7, 8, 1)}
FACTS = {
    "a": ItemFacts("a", "Alpha", 1995, ("Comedy",), 0),
    "b": ItemFacts("b", "Beta", 1987, ("Horror", "Thriller"), 1),
    "c": ItemFacts("c", "Gamma", 1991, ("Comedy", "Romance"), 2),
    "d": ItemFacts("d", "Delta", 1977, ("Sci-Fi", "Adventure"), 3),
    "e": ItemFacts("e", "Epsilon", 1979, ("Sci-Fi",), 4),
}


def test_rank_hit_is_ndcg_of_the_target_position():
    completions = [Completion(["a", "b"]), Completion(["b", "c", "a"]), Completion(["b", "c"]), Completion([])]
    assert rank_hit(completions, ["a", "a", "a", "a"]) == [1.0, 0.5, 0.0, 0.0]
    assert rank_hit([Completion(["b", "c", "a"])], ["a"], k=2) == [0.0]     # beyond k counts as a miss


def test_prefix_credit_rewards_shared_sid_levels_discounted_by_rank():
    target = [CODES["a"]]
    assert prefix_credit([Completion(["a"])], target, CODES) == [1.0]
    assert prefix_credit([Completion(["b"])], target, CODES) == pytest.approx([2 / 3])
    assert prefix_credit([Completion(["c"])], target, CODES) == pytest.approx([1 / 3])
    assert prefix_credit([Completion(["d"])], target, CODES) == [0.0]
    # The best item counts: two levels at rank 1 (discount 1/log2 3) beat one level at rank 0.
    assert prefix_credit([Completion(["c", "b"])], target, CODES) == pytest.approx([2 / 3 / math.log2(3)])


def test_format_reward_checks_levels_closing_and_item_validity():
    history = [["e"]]
    good = Completion(["a", "b"], REASONING)
    assert format_reward([good], history, CODES) == [1.0]
    missing_level = Completion(["a"], "<|derivation|>(1) space films.<|recommendation|>Serve (1).")
    unclosed = Completion(["a"], REASONING, closed=False)
    repeated = Completion(["a", "a"], REASONING)
    seen = Completion(["a", "e"], REASONING)
    unknown = Completion(["a", "zzz"], REASONING)
    for bad in (missing_level, unclosed, repeated, seen, unknown):
        assert format_reward([bad], history, CODES)[0] == pytest.approx(5 / 6)
    assert format_reward([Completion([], "")], history, CODES)[0] == pytest.approx(4 / 6)
    assert format_reward([Completion(["a"], "", thinking=False)], history, CODES) == [1.0]


def test_instruction_following_checks_items_against_catalog_attributes():
    comedy = Request("Something comedy please.", categories=("Comedy",))
    seventies = Request("Any 70s movies?", decade=1970)
    no_horror = Request("No more horror.", avoid=("Horror",))
    like_delta = Request("More like Delta.", like_title="Delta")
    completions = [Completion(["a", "c", "d"])] * 4 + [Completion(["e", "b"]), Completion(["a"])]
    scores = instruction_following(completions, [comedy, seventies, no_horror, like_delta, like_delta, None], FACTS)
    assert scores == pytest.approx([2 / 3, 1 / 3, 1.0, 0.0, 0.5, 0.0])
    assert satisfies(FACTS["e"], like_delta, FACTS["d"]) and not satisfies(FACTS["d"], like_delta, FACTS["d"])


def test_target_likelihood_is_the_per_token_geometric_mean():
    completions = [Completion(["a"], extra={"target_logprob": 3 * math.log(0.5), "target_tokens": 3}),
                   Completion(["a"], extra={"target_logprob": 0.0, "target_tokens": 3}), Completion(["a"])]
    assert target_likelihood(completions) == pytest.approx([0.5, 1.0, 0.0])


def test_level3_match_credits_the_stated_category_and_decade_of_the_next_item():
    said = "<|derivation|>(1) x.<|evolution|>(1) long-term.<|recommendation|>Serve (1). Next item: {}."
    completions = [Completion([], said.format("Sci-Fi, 1970s")), Completion([], said.format("Sci-Fi, 1990s")),
                   Completion([], said.format("Comedy, 1970s")), Completion([], said.format("Horror")),
                   Completion([], "<|derivation|>(1) x.<|recommendation|>Serve (1)."), Completion([], "")]
    assert level3_match(completions, ["d"] * 6, facts=FACTS) == [1.0, 0.5, 0.5, 0.0, 0.0, 0.0]
    # Another target, the same statements: the reward follows what actually came next.
    assert level3_match(completions[:3], ["c"] * 3, facts=FACTS) == [0.0, 0.5, 0.5]
    # A precision: a list that names the right category among wrong ones earns a share of it.
    listed = [Completion([], said.format("Sci-Fi, Horror, 1970s")), Completion([], said.format("Sci-Fi, Horror"))]
    assert level3_match(listed, ["d"] * 2, facts=FACTS) == pytest.approx([0.75, 0.25])


def test_combine_weights_rewards_and_skips_zero_weights():
    completions = [Completion(["a", "b"], REASONING), Completion(["d"], REASONING)]
    total, parts = combine(completions, {"rank": 1.0, "prefix": 0.5, "format": 0.0, "instruction": 0.0},
                           targets=["a", "a"], target_codes=[CODES["a"]] * 2, codes=CODES, histories=[[], []],
                           requests=[None, None], facts=FACTS)
    assert set(parts) == {"rank", "prefix"}
    assert total == pytest.approx([1.5, 0.0])


def test_group_advantages_are_centred_scaled_and_zero_for_flat_groups():
    advantages, varied = group_advantages([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0], group_size=4)
    assert varied.tolist() == [True, False]
    expected = (torch.tensor([1.0, 0, 0, 0]) - 0.25) / torch.tensor([1.0, 0, 0, 0]).std(unbiased=False)
    assert torch.allclose(advantages[:4], expected, atol=1e-4)
    assert advantages[:4].sum().abs() < 1e-5 and advantages[4:].abs().sum() == 0
    centred, _ = group_advantages([1.0, 0.0, 0.0, 0.0], group_size=4, scale=False)
    assert torch.allclose(centred, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_grpo_loss_clips_the_ratio_and_penalises_kl():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    mask = torch.ones(1, 2)
    loss, stats = grpo_loss(logp, logp, logp, torch.tensor([2.0]), mask, clip=0.2, kl_coef=0.1)
    assert loss.item() == pytest.approx(-2.0) and stats["kl"] == pytest.approx(0.0) and stats["clip_frac"] == 0
    # The ratio is 1.5 against the old policy: a positive advantage is only credited up to 1 + clip.
    old = logp - math.log(1.5)
    loss, stats = grpo_loss(logp, old, logp, torch.tensor([1.0]), mask, clip=0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(-1.2) and stats["clip_frac"] == 1.0
    # Moving away from the reference costs: k3 KL is positive.
    loss, stats = grpo_loss(logp, logp, logp - 0.5, torch.tensor([0.0]), mask, clip=0.2, kl_coef=1.0)
    assert stats["kl"] == pytest.approx(math.exp(-0.5) + 0.5 - 1) and loss.item() == pytest.approx(stats["kl"])
    # A positive advantage pushes the sampled tokens' log-probability up.
    param = torch.zeros(2, requires_grad=True)
    new = torch.log_softmax(param, -1)[None].expand(1, 2)
    loss, _ = grpo_loss(new, new.detach(), new.detach(), torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), 0.2, 0.0)
    loss.backward()
    assert param.grad[0] < 0 < param.grad[1]


def test_best_of_group_keeps_only_successful_winners():
    prompt = Prompt("next_item", ["e"], "a")
    group = [Rollout(prompt, [1], 1, ["a"], REASONING, reward=1.2, parts={"rank": 1.0, "format": 1.0}),
             Rollout(prompt, [1], 1, ["b"], REASONING, reward=0.3, parts={"rank": 0.0, "format": 1.0})]
    flat = [Rollout(prompt, [1], 1, ["b"], REASONING, reward=0.3, parts={"rank": 0.0, "format": 1.0})] * 2
    miss = [Rollout(prompt, [1], 1, ["b"], REASONING, reward=0.5, parts={"rank": 0.0, "format": 1.0}),
            Rollout(prompt, [1], 1, ["d"], REASONING, reward=0.1, parts={"rank": 0.0, "format": 1.0})]
    kept = best_of_group(group + flat + miss, group_size=2)
    assert kept == [group[0]]


@pytest.fixture(scope="module")
def setup(built_dataset, tiny_checkpoint):
    from engine.tokenizer import ThinkrecTokenizer
    from training.dataset_view import DatasetView

    view = DatasetView.load(built_dataset)
    tokenizer = ThinkrecTokenizer.load(tiny_checkpoint)
    prompts = {"next_item": build_prompts(view, tokenizer, "next_item", 2, 0),
               "dialogue": build_prompts(view, tokenizer, "dialogue", 2, 0)}
    return view, tokenizer, prompts


def _args(**overrides) -> RLArgs:
    base = dict(group_size=4, prompts_per_step=3, max_reasoning_tokens=24, eval_users=0, k=5, num_beams=5,
                lr=1e-3, warmup_steps=1, save_every=0)
    return resolved(RLArgs(**(base | overrides)))


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)


def test_dialogue_prompts_carry_a_request_the_target_satisfies(setup):
    view, _, prompts = setup
    assert prompts["dialogue"] and all(p.request is not None and p.user_text for p in prompts["dialogue"])
    assert prompts["next_item"] and all(p.request is None and p.user_text is None for p in prompts["next_item"])


def test_target_logprobs_match_a_plain_forward_pass(setup, tiny_checkpoint):
    _, tokenizer, _ = setup
    model = _model(tiny_checkpoint).eval()
    prefixes = [[tokenizer.item_begin_id] * 3, [tokenizer.think_end_id, tokenizer.item_begin_id]]
    targets = [tokenizer.sid_token_ids((0, 1, 2)), tokenizer.sid_token_ids((3, 4, 5))]
    values = target_logprobs(model, prefixes, targets, tokenizer.pad_id)
    for prefix, target, value in zip(prefixes, targets, values):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prefix + target])).logits[0].float(), -1)
        expected = sum(float(logp[len(prefix) - 1 + j, t]) for j, t in enumerate(target))
        assert value == pytest.approx(expected, abs=1e-4)


def test_two_grpo_steps_change_the_policy_with_finite_loss(setup, tiny_checkpoint, tmp_path):
    view, tokenizer, prompts = setup
    model = _model(tiny_checkpoint)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = grpo(model, tokenizer, view, prompts, {"next_item": 0.5, "dialogue": 0.5}, 2, _args(), tmp_path, "test")
    steps = [r for r in summary["log"] if "reward" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and r["kl"] >= 0 for r in steps)
    assert all(0 <= r["zero_var_share"] < 1 and r["completion_tokens"] > 0 for r in steps)
    assert all(0 < r["r_likelihood"] <= 1 and 0 < r["r_format"] <= 1 for r in steps)
    moved = [n for n, p in summary["model"].named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)            # every trainable tensor moved
    assert (tmp_path / "rl_curves.png").stat().st_size > 10_000 and (tmp_path / "rl_log.jsonl").exists()


def test_killed_grpo_run_resumes_to_the_same_step(setup, tiny_checkpoint, tmp_path):
    view, tokenizer, prompts = setup
    args = _args(save_every=1)
    tasks = {"next_item": 1.0}
    straight = grpo(_model(tiny_checkpoint), tokenizer, view, prompts, tasks, 2, args, tmp_path / "a", "a")

    def crash(record):
        if record["step"] == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        grpo(_model(tiny_checkpoint), tokenizer, view, prompts, tasks, 2, args, tmp_path / "b", "b", on_step=crash)
    progress = json.loads((tmp_path / "b" / "trainer_state" / "progress.json").read_text())
    assert progress["step"] == 1
    resumed = grpo(_model(tiny_checkpoint), tokenizer, view, prompts, tasks, 2, args, tmp_path / "b", "b")
    assert resumed["steps"] == 2
    assert resumed["log"][-1]["reward"] == pytest.approx(straight["log"][-1]["reward"])
    for (name, a), b in zip(straight["model"].named_parameters(), resumed["model"].parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_train_rl_cli_specializes_then_unifies(built_dataset, tiny_checkpoint, tmp_path):
    out = tmp_path / "rl"
    common = ["--data", str(built_dataset), "--init", str(tiny_checkpoint), "--group-size", "4",
              "--prompts-per-step", "4", "--max-reasoning-tokens", "24", "--eval-users", "8",
              "--keep-min-format", "0"]   # a barely trained model rarely writes all three levels in 24 tokens
    result = CliRunner().invoke(app, ["train", "rl", *common, "--out", str(out), "--next-item-steps", "2",
                                      "--dialogue-steps", "2", "--unify-replay", "0.5"])
    assert result.exit_code == 0, result.output
    unified = CheckpointMeta.load(out)
    assert unified.stage == "unified" and unified.parent == str(out / "next_item")
    assert unified.args["preset"] == "tiny" and unified.history[-1]["stage"] == "rl"
    assert set(unified.args["unify_examples"]) >= {"no_think"}
    for task in ("next_item", "dialogue"):
        meta = CheckpointMeta.load(out / task)
        assert meta.stage == "rl" and meta.args["tasks"] == [task] and meta.steps == 2
        assert len(meta.args["valid_ndcg@10_curve"]) == 2          # before and after
        assert (out / task / "rl_curves.png").exists() and not (out / task / "trainer_state").exists()
    model, tokenizer, _ = load_checkpoint(out, built_dataset)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # Side by side in one eval: the SFT start and the unified RL model, both modes.
    report = tmp_path / "eval.json"
    evaluated = CliRunner().invoke(app, ["eval", "--data", str(built_dataset), "--split", "valid",
                                         "--checkpoint", f"sft={tiny_checkpoint},rl={out}", "--max-users", "4",
                                         "--methods", "thinkrec,thinkrec-think", "--max-reasoning-tokens", "24",
                                         "--json", str(report)])
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"thinkrec [sft]", "thinkrec-think [sft]", "thinkrec-auto [sft]", "thinkrec [rl]",
                            "thinkrec-think [rl]", "thinkrec-auto [rl]"}
    assert results["thinkrec [rl]"]["stage"] == "unified" and results["thinkrec [rl]"]["invalid_rate"] == 0
    # Thinking rows carry the reasoning's quality as numbers; non-thinking rows have none.
    assert {"ungrounded_share", "faithfulness", "level3_category_accuracy", "distinct_interests"} <= \
        set(results["thinkrec-think [sft]"]["reasoning"])
    assert "reasoning" not in results["thinkrec [sft]"]
    assert "Reasoning (thinking rows)" in report.with_suffix(".md").read_text()
    # A finished specialist is reused, not retrained.
    again = CliRunner().invoke(app, ["train", "rl", *common, "--out", str(out), "--next-item-steps", "2",
                                     "--dialogue-steps", "2"])
    assert again.exit_code == 0 and "finished earlier" in again.output

    mixed = CliRunner().invoke(app, ["train", "rl", *common, "--mode", "mixed", "--out", str(tmp_path / "mixed"),
                                     "--next-item-steps", "1", "--dialogue-steps", "1"])
    assert mixed.exit_code == 0, mixed.output
    assert CheckpointMeta.load(tmp_path / "mixed").args["tasks"] == ["next_item", "dialogue"]


def test_train_rl_refuses_bad_arguments(built_dataset, tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["train", "rl", "--data", str(built_dataset), "--init", str(tiny_checkpoint),
                                      "--out", str(tmp_path / "x"), "--mode", "nonsense"])
    assert result.exit_code == 1 and "unknown mode" in result.output
    assert not Path(tmp_path / "x").exists()
