"""Training stages on the tiny themed dataset: each stage's corpus trains (every trainable
parameter moves, loss finite), a killed run resumes to the same weights, stages chain into a
checkpoint that evaluation accepts, and a checkpoint from another catalog is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from engine.checkpoint import CheckpointMismatch, CheckpointMeta, load_checkpoint
from training.dataset_view import DatasetView
from training.model_setup import make_model
from training.pretrain import PretrainArgs, build_examples, make_tokenizer
from training.sft import SFTArgs
from training.sft import build_examples as sft_examples
from training.teacher import DeterministicTeacher
from training.trainer import TrainArgs, train

runner = CliRunner()


@pytest.fixture(scope="module")
def view(built_dataset):
    return DatasetView.load(built_dataset)


@pytest.fixture(scope="module")
def tokenizer(view):
    teacher = DeterministicTeacher(view.facts, view.embeddings, view.category_word)
    return make_tokenizer(view, teacher, PretrainArgs(vocab_size=600))


def two_steps_move_everything(model, examples, pad_id, out):
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    summary = train(model, examples, pad_id, out, TrainArgs(max_steps=2, batch_tokens=2048, log_every=1, save_every=0))
    assert summary["steps"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    after = dict(summary["model"].named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not unchanged, unchanged


def test_pretrain_corpus_two_steps(view, tokenizer, tmp_path):
    examples, _ = build_examples(view, tokenizer, seed=0)
    assert {e.task for e in examples} == {"item_to_text", "text_to_item", "item_qa", "sequence_window", "persona", "item_text"}
    model = make_model(tokenizer, "tiny", None, False)
    two_steps_move_everything(model, examples, tokenizer.pad_id, tmp_path)


def test_sft_corpus_two_steps(view, tokenizer, tmp_path):
    teacher = DeterministicTeacher(view.facts, view.embeddings, view.category_word)
    examples = sft_examples(view, tokenizer, teacher, SFTArgs())
    tasks = {e.task for e in examples}
    assert {"cot", "no_think", "dialogue"} <= tasks
    cot = next(e for e in examples if e.task == "cot")
    text = tokenizer.decode([t for t, m in zip(cot.ids, cot.mask) if m])
    assert text.startswith("<think><|derivation|>") and "<|recommendation|>" in text and text.endswith("<|item_end|><|end|>")
    model = make_model(tokenizer, "tiny", None, False)
    two_steps_move_everything(model, examples, tokenizer.pad_id, tmp_path)


def test_history_loss_learns_every_history_item_after_the_first(view, tokenizer):
    teacher = DeterministicTeacher(view.facts, view.embeddings, view.category_word)
    plain = [e for e in sft_examples(view, tokenizer, teacher, SFTArgs(history_loss=False, non_thinking="latest"))
             if e.task == "no_think"]
    learned = [e for e in sft_examples(view, tokenizer, teacher, SFTArgs(history_loss=True, non_thinking="latest"))
               if e.task == "no_think"]
    assert len(plain) == len(learned) > 0
    for before, after in zip(plain, learned):
        assert before.ids == after.ids
        system_end = after.ids.index(tokenizer.end_id)
        assert not any(before.mask[:system_end])
        spans = tokenizer.decode(after.ids[:system_end]).count("<|item_begin|>")
        on = [t for t, m in zip(after.ids[:system_end], after.mask[:system_end]) if m]
        # Every history item but the first: its SID tokens (no span markers) are targets now.
        assert len(on) == (spans - 1) * view.manifest.sid.levels
        assert tokenizer.item_begin_id not in on and tokenizer.item_end_id not in on
        assert after.mask[system_end:] == before.mask[system_end:]


def test_sequence_windows_make_every_item_a_target_once_per_pass(view, tokenizer):
    """Each training item after a user's first is learned exactly once a pass, from the items
    before it in a prompt laid out as the engine serves it (at most history_items of them)."""
    import random

    from training.tasks import SequenceWindows

    width = 3
    examples = SequenceWindows(tokenizer, view, history_items=width, answer_items=2).build(random.Random(0))
    levels = view.manifest.sid.levels
    by_codes = {tuple(tokenizer.item_ids(codes))[1:-1]: item for item, codes in view.codes.items()}
    learned = {}
    for example in examples:
        system_end = example.ids.index(tokenizer.end_id)
        assert tokenizer.decode(example.ids[:system_end]).count("<|item_begin|>") <= width
        targets = [t for t, m in zip(example.ids, example.mask) if m and t in tokenizer.sid_code_of]
        assert len(targets) % levels == 0
        for n in range(0, len(targets), levels):
            item = by_codes[tuple(targets[n:n + levels])]
            learned[item] = learned.get(item, 0) + 1
    expected = {}
    for row in view.train:
        for item in row["item_ids"][1:]:
            expected[item] = expected.get(item, 0) + 1
    # Answers overlap the next window's history by design; every position is learned at least once.
    assert set(learned) == set(expected)
    assert all(learned[i] >= expected[i] for i in expected)
    total = sum(len(r["item_ids"]) - 1 for r in view.train)
    assert total <= sum(learned.values()) <= total * 2


def test_killed_run_resumes_to_the_same_weights(view, tokenizer, tmp_path):
    examples, _ = build_examples(view, tokenizer, seed=0)
    args = TrainArgs(max_steps=4, batch_tokens=1024, log_every=1, save_every=2, warmup_steps=2)
    straight = train(make_model(tokenizer, "tiny", None, False, seed=1), examples, tokenizer.pad_id,
                     tmp_path / "straight", args)["model"]

    def crash(record):
        if record["step"] == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train(make_model(tokenizer, "tiny", None, False, seed=1), examples, tokenizer.pad_id, tmp_path / "killed",
              args, on_log=crash)
    assert json.loads((tmp_path / "killed" / "trainer_state" / "progress.json").read_text())["step"] == 2
    resumed = train(make_model(tokenizer, "tiny", None, False, seed=7), examples, tokenizer.pad_id,
                    tmp_path / "killed", args)
    assert resumed["steps"] == 4
    for (name, a), b in zip(straight.named_parameters(), resumed["model"].parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.fixture(scope="module")
def trained(built_dataset, tmp_path_factory):
    """`thinkrec train all` for a few steps, through the CLI."""
    out = tmp_path_factory.mktemp("ckpt")
    result = runner.invoke(app, ["train", "pretrain", "--data", str(built_dataset), "--out", str(out / "pretrain"),
                                 "--max-steps", "3", "--vocab-size", "600", "--batch-tokens", "2048",
                                 "--history-items", "4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "sft", "--data", str(built_dataset), "--init", str(out / "pretrain"),
                                 "--out", str(out / "sft"), "--max-steps", "3", "--batch-tokens", "2048"])
    assert result.exit_code == 0, result.output
    return out


def test_stages_chain_into_a_checkpoint(trained, built_dataset):
    meta = CheckpointMeta.load(trained / "sft")
    assert meta.stage == "sft" and meta.parent == str(trained / "pretrain")
    assert meta.history[0]["stage"] == "pretrain" and meta.args["max_steps"] == 3
    assert (trained / "sft" / "loss_curve.png").exists() and not (trained / "sft" / "trainer_state").exists()
    model, tokenizer, _ = load_checkpoint(trained / "sft", built_dataset)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_the_prompt_window_travels_with_the_checkpoint(trained, built_dataset, view):
    """The window pre-training was given is recorded, kept by SFT, and the engine's prompts use it."""
    from engine.recommender import open_recommender

    assert CheckpointMeta.load(trained / "pretrain").history_items == 4
    assert CheckpointMeta.load(trained / "sft").history_items == 4
    recommender, _ = open_recommender(trained / "sft", built_dataset, view.codes)
    history = [i for i in view.train[0]["item_ids"]] * 2
    prompt = recommender.prompt_ids(history)
    system = prompt[:prompt.index(recommender.tokenizer.end_id)]
    assert system.count(recommender.tokenizer.item_begin_id) == 4
    assert len(recommender.shown_history(history)) <= 4


def test_eval_runs_every_method(trained, built_dataset, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["eval", "--data", str(built_dataset), "--checkpoint", str(trained / "sft"),
                                 "--split", "valid", "--json", str(out), "--sasrec-epochs", "3",
                                 "--max-reasoning-tokens", "16", "--max-users", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["num_users"] == 8 and set(report["results"]) == {"popularity", "markov", "sasrec", "thinkrec",
                                                                   "thinkrec-think", "thinkrec-race", "thinkrec-auto"}
    assert 0 <= report["results"]["thinkrec-auto"]["thinking_share"] <= 1
    for values in report["results"].values():
        assert values["invalid_rate"] == 0 and values["seen_rate"] == 0 and values["repeat_rate"] == 0
        assert 0 <= values["ndcg@10"] <= values["hr@10"] <= 1
    assert out.with_suffix(".png").exists() and "| thinkrec-think |" in out.with_suffix(".md").read_text()


def test_checkpoint_from_another_catalog_is_refused(trained, built_dataset, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in Path(trained / "sft").iterdir():
        if name.is_file():
            (other / name.name).write_bytes(name.read_bytes())
    meta = CheckpointMeta.load(other)
    meta.dataset_fingerprint = "0123456789abcdef"
    meta.save(other)
    with pytest.raises(CheckpointMismatch, match="does not match the catalog") as error:
        load_checkpoint(other, built_dataset)
    assert "0123456789abcdef" in str(error.value)
    result = runner.invoke(app, ["eval", "--data", str(built_dataset), "--checkpoint", str(other),
                                 "--methods", "thinkrec", "--max-users", "2"])
    assert result.exit_code == 1 and "does not match the catalog" in result.output


def test_lora_on_a_local_base_model(view, tokenizer, tmp_path, built_dataset):
    """A 'pretrained' base folder (random Qwen3 + its own tokenizer.json) tuned with LoRA."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from training.presets import new_model

    base = tmp_path / "base"
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["some general text about films and books"] * 50,
                                trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    base.mkdir()
    backend.save(str(base / "tokenizer.json"))
    new_model("tiny", backend.get_vocab_size(), 0, 0).save_pretrained(str(base))
    result = runner.invoke(app, ["train", "pretrain", "--data", str(built_dataset), "--out", str(tmp_path / "lora"),
                                 "--base-model", str(base), "--lora", "--max-steps", "2", "--batch-tokens", "2048"])
    assert result.exit_code == 0, result.output
    model, tok, meta = load_checkpoint(tmp_path / "lora", built_dataset)
    assert meta.lora and meta.base_model == str(base)
    assert not any("lora" in n for n, _ in model.named_parameters())        # merged before saving
    assert len(tok) > backend.get_vocab_size()


def test_sft_with_a_langchain_teacher(trained, built_dataset, tmp_path):
    """--teacher module:factory: the chat model's words become the training rationales."""
    from engine.tokenizer import ThinkrecTokenizer
    from training.sft import load_teacher

    view = DatasetView.load(built_dataset)
    teacher = load_teacher("tests.fake_teacher:make", view)
    tokenizer = ThinkrecTokenizer.load(trained / "sft")
    examples = sft_examples(view, tokenizer, teacher, SFTArgs())
    cot = next(e for e in examples if e.task == "cot")
    assert "space adventures and cartoons" in tokenizer.decode(cot.ids)
    result = runner.invoke(app, ["train", "sft", "--data", str(built_dataset), "--init", str(trained / "pretrain"),
                                 "--out", str(tmp_path / "sft"), "--max-steps", "1", "--teacher", "tests.fake_teacher:make"])
    assert result.exit_code == 0, result.output
    assert "teacher_fallbacks" in CheckpointMeta.load(tmp_path / "sft").args
    result = runner.invoke(app, ["train", "sft", "--data", str(built_dataset), "--init", str(trained / "pretrain"),
                                 "--out", str(tmp_path / "bad"), "--teacher", "no_colon_here"])
    assert result.exit_code == 1 and "module:factory" in result.output


def test_accelerate_configs_parse():
    """The multi-GPU configs the README points at load as accelerate configs of the right kind."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = Path(__file__).resolve().parents[1] / "training" / "accelerate"
    kinds = {name: load_config_from_file(str(folder / f"{name}.yaml")).distributed_type
             for name in ("ddp", "fsdp", "deepspeed_zero2")}
    assert kinds == {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP,
                     "deepspeed_zero2": DistributedType.DEEPSPEED}
    fsdp = load_config_from_file(str(folder / "fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen3DecoderLayer"
    assert fsdp.mixed_precision == "bf16"


def test_sequence_passes_are_sized_by_the_data():
    from training.pretrain import MAX_SEQUENCE_PASSES, MIN_SEQUENCE_PASSES, sized_passes

    # ML-100K's 844 k tokens a pass stay at 3; a sparse set with 95 k a pass gets more; tiny ones hit the cap.
    assert sized_passes(844_000, 1_500_000) == MIN_SEQUENCE_PASSES
    assert sized_passes(95_000, 1_500_000) == 16
    assert sized_passes(1_000, 1_500_000) == MAX_SEQUENCE_PASSES
    assert sized_passes(10_000_000, 1_500_000) == MIN_SEQUENCE_PASSES


def test_pretrain_records_the_passes_it_ran(view, tokenizer):
    examples, passes = build_examples(view, tokenizer, seed=0, sequence_passes=0, sequence_tokens=0)
    assert passes == 3
    windows = [e for e in examples if e.task == "sequence_window"]
    once, _ = build_examples(view, tokenizer, seed=0, sequence_passes=1)
    assert len(windows) == 3 * len([e for e in once if e.task == "sequence_window"])
