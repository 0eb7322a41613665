"""Decoder-only LLM family: dialogue-context prompts, own-token pooling, padding side, dtype, adapters, CLI."""

import sys

import numpy as np
import pytest
from encoder_testing import extract_cli, tiny_model
from media_fixtures import write_manifest_corpus

from merc.data_manifests.manifest import Dialogue, Utterance
from merc.extract.encoders import EncoderRequest, build_encoder, family_of
from merc.extract.encoders.base import EncoderError
from merc.extract.store import StoreReader

TEXTS = [("A", "this is wonderful news"), ("B", "stop that right now"), ("A", "i miss them so much"),
         ("B", "the weather is fine")]


@pytest.fixture(scope="module")
def dialogue():
    return Dialogue("d", "train", [Utterance(f"u{i}", "d", s, t, "train") for i, (s, t) in enumerate(TEXTS)])


def _llm(kind="llama", **kw):
    return build_encoder(EncoderRequest(f"llm:{tiny_model(kind)}", **kw))


def _encode(enc, dialogue):
    prep = enc.preparer()
    return [prep(u) for u in enc.prepare_dialogue(dialogue)]


def test_prompt_holds_the_previous_k_utterances_with_speakers(dialogue):
    enc = _llm(prompt_context=2)
    items = _encode(enc, dialogue)
    prompt, a, b = items[3].value
    assert prompt == "B: stop that right now\nA: i miss them so much\nB: the weather is fine"
    assert prompt[a:b] == "the weather is fine"
    assert "wonderful" not in prompt  # only k = 2 previous utterances
    assert items[0].value[0] == "A: this is wonderful news"  # nothing before the first one


def test_pooling_covers_the_utterance_tokens_only(dialogue):
    enc = _llm(prompt_context=2)
    for item in _encode(enc, dialogue):
        ids, own = enc.tokenize(item)
        assert enc.tokenizer.decode([ids[j] for j in own]).strip() == item.value[0][item.value[1]:item.value[2]]
        assert own == list(range(own[0], own[-1] + 1)) and own[-1] == len(ids) - 1


def test_vectors_change_with_context_but_not_where_there_is_none(dialogue):
    plain, with_context = _llm(), _llm(prompt_context=2)
    no_ctx = [e.pooled for e in plain.encode_batch(_encode(plain, dialogue))]
    ctx = [e.pooled for e in with_context.encode_batch(_encode(with_context, dialogue))]
    np.testing.assert_allclose(no_ctx[0], ctx[0], atol=1e-5)
    assert not np.allclose(no_ctx[3], ctx[3], atol=1e-3)
    # own-token pooling: vectors keep the size of one layer whatever the prompt length
    assert ctx[3].shape == (32,)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_side_and_batching_do_not_change_vectors(kind, pooling, dialogue):
    enc = _llm(kind, prompt_context=3, pooling=pooling)
    items = _encode(enc, dialogue)  # prompts of 1..4 utterances: lots of padding
    right = enc.encode_batch(items)
    enc.opts.padding_side = "left"
    left = enc.encode_batch(items)
    for i, item in enumerate(items):
        alone = enc.encode_batch([item])[0].pooled
        np.testing.assert_allclose(right[i].pooled, alone, atol=1e-4)
        np.testing.assert_allclose(left[i].pooled, alone, atol=1e-4)


def test_fingerprint_follows_layers_pooling_and_prompt():
    base = _llm().fingerprint()
    for kw in ({"layers": "-2"}, {"pooling": "last"}, {"prompt_context": 1},
               {"prompt_template": "Dialogue:\n{context}{speaker} says: {text}"}):
        assert _llm(**kw).fingerprint() != base, kw
    assert _llm().fingerprint() == base


def test_bad_templates_adapter_without_peft_and_bf16(dialogue, monkeypatch):
    with pytest.raises(EncoderError, match=r"\{text\} exactly once"):
        _llm(prompt_template="{context}{speaker}")
    with pytest.raises(EncoderError, match="adapter folder not found"):
        _llm(adapter="some/adapter")
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(EncoderError, match="pip install peft"):
        _llm(adapter="some/adapter")
    monkeypatch.undo()
    enc = _llm()
    items = _encode(enc, dialogue)
    fp32 = enc.encode_batch(items)
    bf16 = _llm(dtype="bf16")
    assert bf16.fingerprint()["dtype"] == "bfloat16"
    for a, b in zip(fp32, bf16.encode_batch(items), strict=True):
        np.testing.assert_allclose(a.pooled, b.pooled, atol=0.15)


def test_cli_llm_with_context_and_hf_dispatch(tmp_path):
    corpus = write_manifest_corpus(tmp_path / "c", n_dialogues=3, n_utts=3)
    assert family_of(str(tiny_model("llama"))) == "llm"
    store = tmp_path / "l.zarr"
    out = extract_cli("--dataset", "manifest", "--root", corpus, "--encoder", f"hf:{tiny_model('llama')}",
                      "--prompt-context", "2", "--pooling", "last", "--layers", "all", "--store", store,
                      "--feature-set", "llama")
    assert "3/3 dialogues complete, dim 96, 0 utterance(s) skipped" in out
    fp = StoreReader(store).info("manifest", "llama")["fingerprint"]
    assert fp["prompt_context"] == 2 and fp["pooling"] == "last" and fp["pooled_tokens"] == "own"
    out = extract_cli("--dataset", "manifest", "--root", corpus, "--encoder", f"hf:{tiny_model('roberta')}",
                      "--prompt-context", "2", "--store", store, code=2)
    assert "--prompt-context applies to llm encoders" in out


def test_lora_adapter_is_merged_like_a_merged_checkpoint(dialogue, tmp_path):
    """--adapter: a PEFT LoRA adapter on the tiny LM gives the vectors of the same LoRA merged and saved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tiny_model("llama")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    lora.merge_and_unload().save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp_path / "merged")

    with_adapter = _llm(adapter=str(tmp_path / "adapter"))
    merged = build_encoder(EncoderRequest(f"llm:{tmp_path / 'merged'}"))
    base = _llm()
    items = _encode(base, dialogue)
    got = [e.pooled for e in with_adapter.encode_batch(items)]
    for a, b, c in zip(got, merged.encode_batch(items), base.encode_batch(items), strict=True):
        np.testing.assert_allclose(a, b.pooled, atol=1e-5)
        assert not np.allclose(a, c.pooled, atol=1e-3)  # the adapter does change the features
    assert with_adapter.fingerprint()["adapter"] != base.fingerprint()["adapter"]
