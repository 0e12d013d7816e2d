"""The lm-eval model `utrc` and the results files (docs/method.md §4, README's API), with real lm-eval on both sides.

Tiny random models (tests/conftest.py) are saved in Hugging Face format with a byte-level
tokenizer built offline; lm-eval's own task configs read the small local files in
tests/data/lm_eval/ (utrc.evaluation.local_task_manager).
"""

import json
import math
from pathlib import Path

import lm_eval
import pytest
import torch
from conftest import tiny_config, tiny_model
from lm_eval.api.instance import Instance
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Mamba2ForCausalLM, MambaForCausalLM, PreTrainedTokenizerFast

from utrc import LayerSpec, ModelShape, ModelSpec, Policy, PolicyError, apply
from utrc.evaluation import (
    BENCHMARKS,
    FORMAT,
    PAPER_METRICS,
    _item_scores,
    evaluate,
    local_task_manager,
    read_results,
    results_document,
    write_results,
)
from utrc.flops import estimate_flops, realized_flops
from utrc.generation import greedy_generate
from utrc.lm_eval import UtrcLM, rows_at_positions

DATA = Path(__file__).parent / "data" / "lm_eval"
TASKS = [*BENCHMARKS, "wikitext"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine torch's
    # spinning worker threads make these tests ten times slower when another job is running.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_bootstrap_pool(monkeypatch):
    # lm-eval bootstraps perplexity's stderr in a multiprocessing pool unless told otherwise
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")


def byte_tokenizer():
    """Byte-level BPE without merges: every text round-trips, one token per byte (GPT-NeoX style specials)."""
    vocab = {"<|endoftext|>": 0, "<|padding|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|padding|>"
    )


def save_tiny(architecture, directory):
    tok = byte_tokenizer()
    config = tiny_config(architecture)
    config.vocab_size, config.bos_token_id, config.eos_token_id, config.pad_token_id = len(tok), 0, 0, 1
    torch.manual_seed(0)
    model = (Mamba2ForCausalLM if architecture == "mamba2" else MambaForCausalLM)(config).eval()
    with torch.no_grad():  # as conftest.tiny_model: random norms make importance informative
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight")):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """architecture -> (model directory, reducing policy file, model), built once per session."""
    built = {}

    def get(architecture):
        if architecture not in built:
            directory = tmp_path_factory.mktemp(f"tiny_{architecture}")
            model = save_tiny(architecture, directory / "model")
            spec = ModelSpec.of(ModelShape.of(model), name="tiny")
            policy = Policy(method="utrc", model=spec, layers={1: LayerSpec(0.6), 2: LayerSpec(0.6)})
            built[architecture] = (str(directory / "model"), str(policy.save(directory / "policy.json")), model)
        return built[architecture]

    return get


@pytest.fixture(params=["mamba2", "mamba"])
def tiny(request, tiny_models):
    return tiny_models(request.param)


@pytest.fixture(scope="session")
def task_manager(tmp_path_factory):
    return local_task_manager({t: DATA / f"{t}.jsonl" for t in TASKS}, tmp_path_factory.mktemp("tasks"))


def per_request(results):
    """{task: [per-request responses of each doc, in doc order]}."""
    return {t: [s["resps"] for s in sorted(samples, key=lambda s: s["doc_id"])]
            for t, samples in results["samples"].items()}


def run(model, model_args, task_manager, tasks=TASKS, **kw):
    return lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=list(tasks), task_manager=task_manager,
        log_samples=True, bootstrap_iters=0, **kw,
    )


def n_lines(task):
    return len((DATA / f"{task}.jsonl").read_text().splitlines())


# --- the metric reported per task -----------------------------------------------------------------

# Copied from the paper's Tables 1 and 2 (lm-eval names): the metric each benchmark's column reports.
PAPER_TABLE = {
    "lambada_openai": "acc",
    "hellaswag": "acc_norm",
    "piqa": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "winogrande": "acc",
}
DEMO_TABLE = {f"demo_{t.removesuffix('_openai')}": metric for t, metric in PAPER_TABLE.items()}


def test_reported_metric_per_task_is_the_papers():
    assert {t: PAPER_METRICS[t] for t in BENCHMARKS} == PAPER_TABLE
    assert {t: PAPER_METRICS[t] for t in DEMO_TABLE} == DEMO_TABLE  # each demo task as its benchmark


# --- dense equals lm-eval's own HF model ------------------------------------------------------------


def test_dense_policy_matches_lm_eval_hf_model(tiny, task_manager):
    model_dir, _, _ = tiny
    hf = run("hf", f"pretrained={model_dir},dtype=float32,device=cpu", task_manager, batch_size=8)
    ours = run("utrc", f"pretrained={model_dir},policy=dense,device=cpu", task_manager, batch_size=8)
    hf_resps, our_resps = per_request(hf), per_request(ours)
    assert set(our_resps) == set(TASKS)
    for task in TASKS:
        assert len(our_resps[task]) == n_lines(task)
        for hf_doc, our_doc in zip(hf_resps[task], our_resps[task], strict=True):
            for a, b in zip(hf_doc, our_doc, strict=True):  # every request of the doc (each choice)
                if task == "wikitext":  # rolling: one float per document
                    assert b[0] == pytest.approx(a[0], rel=1e-5)
                else:
                    assert b[0][0] == pytest.approx(a[0][0], rel=1e-5, abs=1e-5)
                    assert b[0][1] == a[0][1]
    for task in TASKS:
        for key, value in hf["results"][task].items():
            if isinstance(value, float):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-5), (task, key)
    realized = ours["config"]["utrc"]["realized"]
    assert all(realized[t]["flops_reduction"] == 0.0 for t in TASKS)
    assert realized["wikitext"]["dense_fallback"] and not realized["piqa"]["dense_fallback"]


# --- batch invariance -----------------------------------------------------------------------------


def test_scores_do_not_depend_on_batch_size(tiny, task_manager):
    model_dir, policy, _ = tiny
    args = f"pretrained={model_dir},policy={policy},device=cpu"
    one, eight = (per_request(run("utrc", args, task_manager, tasks=BENCHMARKS, batch_size=b)) for b in (1, 8))
    for task in BENCHMARKS:
        for doc1, doc8 in zip(one[task], eight[task], strict=True):
            for a, b in zip(doc1, doc8, strict=True):
                assert b[0][0] == pytest.approx(a[0][0], rel=1e-4)
                assert b[0][1] == a[0][1]


# --- the six benchmarks through evaluate(): the results document ---------------------------------


def test_six_benchmarks_results_document(tiny, task_manager, tmp_path):
    model_dir, policy, model = tiny
    doc = evaluate(model_dir, policy, TASKS, task_manager=task_manager, batch_size=4, device="cpu", bootstrap_iters=10)

    assert doc["format"] == FORMAT and doc["method"] == "utrc" and doc["model"] == model_dir
    assert doc["policy"] == Policy.load(policy).to_dict() and doc["policy_file"] == policy
    assert set(doc["tasks"]) == set(TASKS)
    for task in BENCHMARKS:
        t = doc["tasks"][task]
        assert t["n_items"] == n_lines(task)
        assert t["paper_metric"] == PAPER_TABLE[task] and t["score"] == t["metrics"][t["paper_metric"]]
        assert {"acc", "acc_stderr"} <= set(t["metrics"])
        assert 0.0 <= t["score"] <= 1.0
        assert 0.0 < t["realized_flops_reduction"] < 1.0 and 0.0 < t["realized_token_fraction"] < 1.0
        assert not t["dense_fallback"]
    for task in ("hellaswag", "piqa", "arc_easy", "arc_challenge"):
        assert {"acc_norm", "acc_norm_stderr"} <= set(doc["tasks"][task]["metrics"])
    assert doc["tasks"]["winogrande"]["n_requests"] == 2 * n_lines("winogrande")  # one context per option
    assert doc["tasks"]["hellaswag"]["n_requests"] == 4 * n_lines("hellaswag")
    lambada = doc["tasks"]["lambada_openai"]
    assert lambada["paper_extra"]["perplexity"] == lambada["metrics"]["perplexity"] > 1.0
    assert lambada["metrics"]["perplexity_stderr"] is not None
    # long scored suffixes (two sentences for PIQA) leave less to reduce than LAMBADA's one word
    assert doc["tasks"]["piqa"]["realized_token_fraction"] < lambada["realized_token_fraction"]

    wikitext = doc["tasks"]["wikitext"]  # rolling log-likelihood: every position scored, run dense
    assert wikitext["dense_fallback"] and wikitext["realized_flops_reduction"] == 0.0
    assert wikitext["paper_metric"] is None and "word_perplexity" in wikitext["metrics"]

    assert doc["average_over"] == sorted(BENCHMARKS)
    assert doc["average"] == pytest.approx(sum(doc["tasks"][t]["score"] for t in BENCHMARKS) / 6)
    nominal = estimate_flops(model, Policy.load(policy), seq_len=2048, protect_last=1)
    assert doc["nominal"]["reduction"] == nominal["reduction"] and doc["nominal"]["seq_len"] == 2048
    assert set(doc["versions"]) >= {"utrc", "torch", "transformers", "lm_eval"}
    assert doc["device"] == "cpu" and doc["dtype"] == "float32" and doc["seed"] == 1234 and doc["batch_size"] == 4

    path = write_results(doc, tmp_path / "out" / "results.json")
    assert read_results(path) == json.loads(json.dumps(doc))


def test_item_scores_are_optional_and_agree_with_the_task_scores(tiny_models, task_manager):
    model_dir, policy, _ = tiny_models("mamba2")
    tasks = ["piqa", "lambada_openai"]
    plain = evaluate(model_dir, policy, tasks, task_manager=task_manager, batch_size=4, bootstrap_iters=0)
    assert all("item_scores" not in t for t in plain["tasks"].values())  # the default document is unchanged
    doc = evaluate(model_dir, policy, tasks, task_manager=task_manager, batch_size=4, bootstrap_iters=0,
                   item_scores=True)
    for task in tasks:
        t, items = doc["tasks"][task], doc["tasks"][task]["item_scores"]
        assert items["doc_id"] == list(range(n_lines(task))) and len(items["doc_hash"]) == t["n_items"]
        assert sum(items[t["paper_metric"]]) / t["n_items"] == pytest.approx(t["score"])
        assert t["score"] == plain["tasks"][task]["score"]
    assert set(doc["tasks"]["piqa"]["item_scores"]) == {"doc_id", "doc_hash", "acc", "acc_norm"}
    assert set(doc["tasks"]["lambada_openai"]["item_scores"]) == {"doc_id", "doc_hash", "acc"}
    with pytest.raises(ValueError, match="log_samples"):  # results of a run that logged no samples
        _item_scores({"results": {}}, "piqa")


def test_realized_cost_is_charged_per_task_and_matches_the_flops_model(tiny):
    model_dir, policy_file, model = tiny
    lm = UtrcLM(pretrained=model_dir, policy=policy_file, device="cpu", batch_size=3)
    requests = [  # (task, context, continuation)
        ("task_a", "a context of some length, long enough to reduce", " and its end"),
        ("task_b", "another, shorter context", " with a longer continuation here"),
        ("task_a", "x", " where everything is protected"),
        ("task_b", "another, shorter context", " with a longer continuation here"),  # a duplicate
    ]
    instances = [
        Instance("loglikelihood", {}, (ctx, cont), 0, (task, i, 1)) for i, (task, ctx, cont) in enumerate(requests)
    ]
    lm.loglikelihood(instances)
    policy, shape = Policy.load(policy_file), ModelShape.of(model)
    expected = {"task_a": [0.0, 0.0], "task_b": [0.0, 0.0]}
    for task, ctx, cont in requests:
        n, k = len((ctx + cont).encode()) - 1, len(cont.encode())  # one token per byte
        est = estimate_flops(shape, policy, seq_len=n, protect_last=k)
        expected[task][0] += est["dense"]
        expected[task][1] += est["reduced"]
    realized = lm.realized()
    for task, (dense, reduced) in expected.items():
        assert realized[task]["requests"] == 2
        assert realized[task]["dense_flops"] == dense and realized[task]["reduced_flops"] == reduced
    lm.reset_realized()
    assert lm.realized() == {}


def test_set_policy_switches_scoring_without_reloading(tiny, tmp_path):
    model_dir, policy_file, _ = tiny
    lm = UtrcLM(pretrained=model_dir, policy="dense", device="cpu", batch_size=2)
    loaded = lm.model
    request = ("a context of some length, long enough to reduce", " and its end")
    instances = [Instance("loglikelihood", {}, request, 0, ("t", 0, 1))]
    dense = lm.loglikelihood(instances)
    lm.set_policy(Policy.load(policy_file))
    reduced = lm.loglikelihood(instances)
    assert lm.model is loaded and lm.realized()["t"]["reduced_flops"] < lm.realized()["t"]["dense_flops"]
    assert reduced[0][0] != pytest.approx(dense[0][0], abs=1e-6)  # the policy is applied, not a silent dense run
    other = Policy.paper(ModelSpec(name="other", architecture=lm.shape.architecture, n_layer=64, d_model=2560), 0.9)
    with pytest.raises(PolicyError, match="n_layer"):
        lm.set_policy(other)
    assert lm.policy == Policy.load(policy_file)  # a refused policy leaves the current one in place
    lm.set_policy(Policy.dense(ModelSpec.of(lm.shape, name=model_dir)))
    assert lm.loglikelihood(instances)[0][0] == pytest.approx(dense[0][0], abs=1e-6)


@pytest.mark.parametrize("method", ["utrc", "evit", "tome"])
def test_realized_flops_agree_with_estimate_flops(method):
    m = tiny_model("mamba2", n_layer=6)
    shape = ModelShape.of(m)
    policy = Policy(method=method, model=ModelSpec.of(shape),
                    layers={0: LayerSpec(0.7), 3: LayerSpec(0.5), 5: LayerSpec(0.6)})
    ids = torch.randint(3, 60, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 31:] = 0
    mask[2, 17:] = 0
    protect = torch.tensor([1, 6, 17])
    out = apply(m, policy)(ids, protect_last=protect, attention_mask=mask)
    got = realized_flops(shape, policy, out.tokens_per_layer.tolist(), protect.tolist(), out.lengths.tolist())
    for (dense, reduced), n, k in zip(got, [40, 31, 17], protect.tolist(), strict=True):
        est = estimate_flops(shape, policy, seq_len=n, protect_last=k)
        assert (dense, reduced) == (est["dense"], est["reduced"])
    with pytest.raises(ValueError, match="block 1"):  # a drop where the policy does not reduce
        realized_flops(shape, policy, [[40]] * 2 + [[30]] * 4, [1], [30])


# --- scored positions -----------------------------------------------------------------------------


def test_continuations_are_scored_from_their_own_positions(tiny):
    model_dir, _, model = tiny
    spec = ModelSpec.of(ModelShape.of(model))
    # Halving at every block would remove continuation tokens too if they were not protected.
    aggressive = Policy(method="utrc", model=spec, layers={i: LayerSpec(0.5) for i in range(3)})
    lm = UtrcLM(pretrained=model_dir, policy=aggressive, device="cpu", batch_size=8)
    tok = lm.tokenizer
    pairs = [
        ("The river ran past the mill", " and under the old stone bridge"),
        ("A", " short context with a long continuation that is scored at every position"),
        ("Some context that is a good deal longer than its continuation, so most of it is reduced", " end"),
        ("Mid-length context here", " and a mid-length end"),
    ]
    instances = [Instance("loglikelihood", {}, pair, 0, ("t", i, 1)) for i, pair in enumerate(pairs)]
    scores = [ll for ll, _ in lm.loglikelihood(instances)]  # one batch: rows of different lengths, padded

    reduced, dense_logits = apply(lm.model, aggressive), []
    for (ctx, cont), score in zip(pairs, scores, strict=True):
        c, k = tok(ctx).input_ids, tok(cont).input_ids
        ids = torch.tensor([c + k[:-1]])
        n = ids.shape[1]
        scored = range(n - len(k), n)
        unprotected = reduced(ids, protect_last=0).positions[0].tolist()
        assert not set(scored) <= set(unprotected)  # unprotected, some scored tokens would be removed
        out = reduced(ids, protect_last=len(k))
        positions = out.positions[0].tolist()
        assert out.lengths.item() < n or len(c) == 1  # the context was reduced ...
        rows = [positions.index(p) for p in scored]  # ... but every scored position survives
        expected = sum(float(out.logits[0, r].log_softmax(-1)[t]) for r, t in zip(rows, k, strict=True))
        assert score == pytest.approx(expected, rel=1e-4)
        if len(c) > 1:  # the scored rows moved: reading the original indices would score other tokens
            assert rows != list(scored)
        with torch.no_grad():
            dense_logits.append(model(ids).logits[0, n - len(k) :].log_softmax(-1))
    # a 1-token context protects the whole input: nothing is reduced, so the score is the dense one
    k = tok(pairs[1][1]).input_ids
    assert scores[1] == pytest.approx(float(dense_logits[1].gather(1, torch.tensor(k)[:, None]).sum()), rel=1e-5)


def test_rows_at_positions():
    positions = torch.tensor([[0, 2, 3, 7, 8, -1], [1, 4, 5, 6, -1, -1]])
    rows = rows_at_positions(positions, [range(7, 9), [4, 6]])
    assert [r.tolist() for r in rows] == [[3, 4], [1, 3]]
    with pytest.raises(RuntimeError, match="reduced away"):
        rows_at_positions(positions, [[6, 7], [5]])
    with pytest.raises(RuntimeError, match="reduced away"):
        rows_at_positions(positions, [[9], [5]])


# --- generation -----------------------------------------------------------------------------------

GEN_TASK = """\
task: tiny_generation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_generation_reduced_prefill_then_cached_decoding(tiny, tmp_path):
    model_dir, policy_file, model = tiny
    (tmp_path / "gen.yaml").write_text(GEN_TASK.format(data=DATA / "lambada_openai.jsonl"))
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    hf = run("hf", f"pretrained={model_dir},dtype=float32,device=cpu", tm, tasks=["tiny_generation"], batch_size=1)
    dense = run("utrc", f"pretrained={model_dir},policy=dense,device=cpu", tm, tasks=["tiny_generation"], batch_size=4)
    assert per_request(dense) == per_request(hf)  # the cached decode is HF's greedy generate

    reduced = run("utrc", f"pretrained={model_dir},policy={policy_file},device=cpu", tm, tasks=["tiny_generation"],
                  batch_size=4)
    realized = reduced["config"]["utrc"]["realized"]["tiny_generation"]
    assert realized["requests"] == n_lines("lambada_openai") and realized["flops_reduction"] > 0.0

    # the first generated token is the reduced model's prediction at the last prompt position
    policy = Policy.load(policy_file)
    ids = torch.randint(3, 200, (2, 45), generator=torch.Generator().manual_seed(0))
    new, _ = greedy_generate(apply(model, policy), ids, 4, lambda tokens: False)
    full = apply(model, policy)(ids, protect_last=1)
    assert [t[0] for t in new] == full.logits[:, -1].argmax(-1).tolist()
    assert all(len(t) == 4 for t in new)


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_task_fails_before_the_model_loads(tiny, task_manager):
    _, policy, _ = tiny
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['piqa_typo'\]"):
        evaluate("/no/such/model", policy, ["piqa", "piqa_typo"], task_manager=task_manager)


def test_missing_policy_file(tiny, task_manager, tmp_path):
    model_dir, _, _ = tiny
    missing = tmp_path / "nope.json"
    with pytest.raises(PolicyError, match="policy file not found"):
        evaluate("/no/such/model", missing, ["piqa"], task_manager=task_manager)
    with pytest.raises(PolicyError, match="policy file not found"):
        run("utrc", f"pretrained={model_dir},policy={missing}", task_manager, tasks=["piqa"])
    with pytest.raises(PolicyError, match="policy=dense"):
        UtrcLM(pretrained=model_dir)


def test_policy_for_another_model(tiny, task_manager, tmp_path):
    model_dir, _, model = tiny
    shape = ModelShape.of(model)
    other = Policy.paper(ModelSpec(name="state-spaces/mamba2-2.7b", architecture=shape.architecture, n_layer=64,
                                   d_model=2560), 0.9)
    path = other.save(tmp_path / "other.json")
    with pytest.raises(PolicyError, match="model.n_layer: the policy was made for 64 but the model has 4"):
        evaluate(model_dir, path, ["piqa"], task_manager=task_manager)


def test_continuation_longer_than_max_length(tiny, task_manager):
    model_dir, policy, _ = tiny
    with pytest.raises(ValueError, match="continuation longer than max_length=16"):
        evaluate(model_dir, policy, ["piqa"], task_manager=task_manager, max_length=16)
    lm = UtrcLM(pretrained=model_dir, policy=policy, device="cpu", max_length=16)
    calls = []
    hook = lm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    short = Instance("loglikelihood", {}, ("context", " ok"), 0, ("t", 0, 1))
    long = Instance("loglikelihood", {}, ("context", " a continuation of more than sixteen bytes"), 0, ("t", 1, 1))
    with pytest.raises(ValueError, match="at least 42"):
        lm.loglikelihood([short, long])
    hook.remove()
    assert not calls and lm.realized() == {}  # nothing was scored


# --- command line ---------------------------------------------------------------------------------


def test_command_line_is_lm_evals_with_the_model_registered(tiny_models, task_manager, tmp_path):
    model_dir, policy, _ = tiny_models("mamba2")
    from utrc.lm_eval import main

    tasks_dir = Path(task_manager.include_path)
    main([
        "--model", "utrc", "--model_args", f"pretrained={model_dir},policy={policy}", "--device", "cpu",
        "--tasks", "piqa", "--include_path", str(tasks_dir), "--limit", "2", "--batch_size", "2",
        "--output_path", str(tmp_path / "out"),
    ])
    written = list((tmp_path / "out").rglob("results_*.json"))
    assert len(written) == 1
    doc = results_document(json.loads(written[0].read_text()))
    assert doc["tasks"]["piqa"]["n_items"] == 2 and doc["tasks"]["piqa"]["realized_flops_reduction"] > 0
    assert math.isfinite(doc["tasks"]["piqa"]["score"])
