"""The embedded demo: deterministic data, disjoint splits, a closed vocabulary, shipped task items
that match the generator, lm-eval tasks that load offline, concurrent first use, and the shipped
models."""

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from demo import calibration_texts, items, vocab, world
from demo import tasks as generator
from demo.tokenizer import build_tokenizer, vocabulary
from utrc.demo import tasks

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "utrc" / "demo" / "models"

# sha256 of `_sample_digest_input()`. The demo models were trained on this generator's text: if the
# generated text changes, bump world.GENERATOR_VERSION, retrain both models
# (python -m demo.train, see docs/demo.md) and update this value.
GOLDEN_SAMPLE_SHA256 = "2918d78daa372baa9ffed4004070aebb0dec0ed90c2ccb3efec582f08cd583b9"


def _sample_digest_input() -> bytes:
    parts = [json.dumps(generator.generate_items(t, "test", 3), sort_keys=True) for t in tasks.TASKS]
    parts += [items.training_episode(random.Random(f"golden/{i}")) for i in range(3)]
    parts += calibration_texts(2)
    return "\n".join(parts).encode()


def _digest() -> str:
    return hashlib.sha256(_sample_digest_input()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UTRC_CACHE", str(tmp_path))
    return tmp_path


def test_generation_is_deterministic_across_processes():
    # PYTHONHASHSEED changes set/dict-of-str iteration order: the data must not depend on it
    code = "import hashlib, tests.test_demo as t; print(t._digest())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == _digest()


def test_generator_output_is_pinned():
    assert _digest() == GOLDEN_SAMPLE_SHA256, (
        "the demo generator's output changed; the shipped models were trained on the old text: bump "
        "demo.world.GENERATOR_VERSION, retrain both demo models and update GOLDEN_SAMPLE_SHA256"
    )


def test_shipped_items_are_the_generators():
    manifest = json.loads((tasks.DATA / "manifest.json").read_text())
    for split in tasks.SPLITS:
        for task in tasks.TASKS:
            data = generator.jsonl(task, split)
            shipped = gzip.decompress((tasks.DATA / split / f"{task}.jsonl.gz").read_bytes())
            assert shipped == data, (
                f"{split}/{task}: the shipped items differ from the generator's; run python -m demo.tasks")
            assert manifest["sha256"][f"{split}/{task}.jsonl"] == hashlib.sha256(data).hexdigest()


def test_installed_demo_needs_no_generator(tmp_path):
    # the package alone (as a wheel installs it): demo tasks and models work without the repository's demo/
    code = ("import sys; sys.modules['demo'] = None; import utrc, utrc.demo as d; "
            "assert d.load_items('demo_piqa', 'dev', 2) and (d.task_dir('test', 2) / 'demo_piqa.yaml').is_file(); "
            "utrc.load_model('demo:mamba'); assert not [m for m in sys.modules if m.startswith('utrc.demo.') "
            "and m != 'utrc.demo.tasks']")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "UTRC_CACHE": str(tmp_path)},
                   check=True)


def test_written_task_data_is_identical_on_rewrite(cache):
    first = tasks.task_dir("test", 4)
    digests = json.loads((first / "manifest.json").read_text())["files"]
    for name, digest in digests.items():
        assert hashlib.sha256((first / name).read_bytes()).hexdigest() == digest
    other = cache / "again"
    os.environ["UTRC_CACHE"] = str(other)
    second = tasks.task_dir("test", 4)
    assert second != first
    assert json.loads((second / "manifest.json").read_text())["files"] == digests


def test_splits_share_no_document():
    docs = {}
    for split in ("dev", "test"):
        for task in tasks.TASKS:
            for row in generator.generate_items(task, split, 20):
                text = row.get("context") or row["choices"][0]
                docs.setdefault(split, set()).add(" ".join(text.split()[:150]))
    docs["calibration"] = {" ".join(t.split()[:150]) for t in calibration_texts(40)}
    rng = random.Random("train-sample")
    docs["train"] = {" ".join(items.training_episode(rng).split()[:150]) for _ in range(200)}
    names = list(docs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not docs[a] & docs[b], f"{a} and {b} share a document"


def test_worlds_belong_to_their_split():
    rng = random.Random(0)
    for split in world.SPLITS:
        for _ in range(20):
            w = world.sample_world(rng, 4, split)
            assert world.split_of(w.names()) == split
    with pytest.raises(ValueError, match="split"):
        world.sample_world(rng, 4, "validation")


def test_items_have_the_promised_shape():
    for task in tasks.TASKS:
        for row in generator.generate_items(task, "dev", 15):
            assert items.MIN_CONTEXT <= row["n_words"] <= items.MAX_CONTEXT
            if task == "demo_lambada":
                assert row["target"] in vocabulary()
                continue
            options = row["options"] if task == "demo_winogrande" else row["choices"]
            assert len(options) == (2 if task in ("demo_piqa", "demo_winogrande") else 4)
            assert len(set(options)) == len(options)
            assert 0 <= row["label"] < len(options)


def test_answers_are_stated_in_the_document():
    for row in generator.generate_items("demo_arc_easy", "test", 20):
        question_start = row["context"].rindex(" question :")
        doc, tail = row["context"][:question_start], row["context"][question_start:]
        prefix = tail.split(" answer : ")[1]
        assert f"{prefix} {row['choices'][row['label']]}" in doc
        wrong = [c for j, c in enumerate(row["choices"]) if j != row["label"]]
        assert not any(f"{prefix} {c} " in doc for c in wrong)


def test_vocabulary_is_closed():
    tok = build_tokenizer()
    unk = tok.unk_token_id
    texts = calibration_texts(5) + [row["context"] for row in generator.generate_items("demo_arc_challenge", "test", 5)]
    texts += [c for row in generator.generate_items("demo_piqa", "test", 5) for c in row["choices"]]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert unk not in ids
        assert len(ids) == len(text.split())  # one token per word
        assert ids == [vocabulary()[w] for w in text.split()]
    assert len(tok) == len(vocab.all_words()) + len(vocab.SPECIAL_TOKENS)


def test_calibration_texts():
    a, b = calibration_texts(3), calibration_texts(3)
    assert a == b and len(a) == 3 and len(set(a)) == 3
    assert calibration_texts(3, seed=7) != a
    with pytest.raises(ValueError, match="n"):
        calibration_texts(-1)


def test_bad_split_is_refused(cache):
    with pytest.raises(ValueError, match="split"):
        tasks.task_manager("train")
    with pytest.raises(ValueError, match="n_items"):
        tasks.task_dir("test", 0)
    with pytest.raises(ValueError, match="more than the 75 items shipped"):
        tasks.task_dir("test", 76)
    assert not any(cache.iterdir())


def test_task_manager_builds_lm_eval_requests(cache):
    tm = tasks.task_manager("dev", n_items=3)
    assert set(tasks.TASKS) <= set(tm.all_tasks)
    task_dict = tm.load(list(tasks.TASKS))["tasks"]
    for name in tasks.TASKS:
        task = task_dict[name]
        task.build_all_requests(limit=2, rank=0, world_size=1)
        rows = tasks.load_items(name, "dev", 3)
        reqs = [inst.arguments for inst in task.instances if inst.doc_id == 0]
        if name == "demo_lambada":
            assert reqs == [(rows[0]["context"], " " + rows[0]["target"])]
        elif name == "demo_winogrande":
            assert reqs == [(c, " " + rows[0]["ending"]) for c in rows[0]["choices"]]
            assert [c.split()[-1] for c in rows[0]["choices"]] == rows[0]["options"]
        else:
            assert reqs == [(rows[0]["context"], " " + c) for c in rows[0]["choices"]]
    yaml_text = (tasks.task_dir("dev", 3) / "demo_piqa.yaml").read_text()
    assert str(cache) in yaml_text  # data named by absolute path, outside the package


def test_concurrent_first_use_writes_one_directory(cache):
    code = "from utrc.demo.tasks import task_dir; print(task_dir('dev', 5))"
    env = {**os.environ, "UTRC_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate()[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    entries = list((cache / "demo").iterdir())
    assert [e.name for e in entries] == [Path(outs[0]).name]  # no temporary directories left
    assert (Path(outs[0]) / "manifest.json").is_file()


@pytest.mark.parametrize("name", ["mamba2", "mamba"])
def test_shipped_demo_model_loads(name):
    import utrc

    directory = MODELS / name
    assert (directory / "model.safetensors").stat().st_size <= 10 * 2**20
    assert (directory / "train.log").is_file()
    model, tok = utrc.load_model(f"demo:{name}")
    assert model.config.model_type == name and model.config.num_hidden_layers == 8
    assert tok.get_vocab() == vocabulary()


def test_demo_mamba2_reads_the_document():
    import utrc
    from demo.score import score_task

    model, tok = utrc.load_model("demo:mamba2")
    rows = generator.generate_items("demo_piqa", "dev", 20)
    assert score_task(model, tok, "demo_piqa", rows)["acc"] >= 0.7  # chance is 0.5


@pytest.mark.parametrize("run", ["utrc-paper", "evit", "tome"])
def test_schedule_policies_meet_the_nominal_budget_of_their_own_method(run):
    import utrc
    from demo.score import policy_for
    from utrc.flops import estimate_flops
    from utrc.names import METHOD
    from utrc.shapes import ModelShape

    model, _ = utrc.load_model("demo:mamba2")
    shape = ModelShape.of(model)
    policy = policy_for(model, f"{run}:0.3", "demo:mamba2")
    assert policy.method == METHOD[run]
    assert 0.3 <= estimate_flops(shape, policy, 2048, 1)["reduction"] < 0.31  # never below the budget
    if run == "evit":  # no matching step to pay for: more tokens kept than the paper schedule
        assert policy.layers[2].keep > policy_for(model, "utrc-paper:0.3").layers[2].keep


@pytest.mark.parametrize("architecture", ["mamba", "mamba2"])
def test_training_exempts_the_state_parameters_from_weight_decay(architecture):
    from conftest import tiny_model

    from demo.train import decay_groups

    model = tiny_model(architecture)
    decay, other = decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)].split(".")[-2] + "." + names[id(p)].split(".")[-1] for p in decay}
    exempt = {names[id(p)] for p in other}
    assert "in_proj.weight" in decayed and "out_proj.weight" in decayed
    # mamba_ssm's rule: A_log, D (and Mamba-2's dt_bias) never decay; Mamba-1's A_log is a 2-D matrix
    assert any(n.endswith("mixer.A_log") for n in exempt) and any(n.endswith("mixer.D") for n in exempt)
    assert not any(n.endswith(("A_log", ".D")) for n in decayed)
    assert len(decay) + len(other) == len(list(model.parameters()))
