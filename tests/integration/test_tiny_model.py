"""The tiny model loads offline in transformers, generates, round-trips text and renders chat turns."""

import hashlib

import pytest

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from retrain.tiny_model import IM_END, IM_START, build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return transformers.AutoTokenizer.from_pretrained(model_dir)


def test_architecture(model_dir):
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    assert cfg.model_type == "qwen2"
    assert cfg.hidden_size // cfg.num_attention_heads == 64  # head_dim the CPU attention kernel accepts
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers) == (2, 1, 2)
    assert sorted(p.name for p in model_dir.glob("*.safetensors")) == ["model.safetensors"]


def test_generate(model_dir, tokenizer):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where is my order #12345?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


@pytest.mark.parametrize(
    "text",
    [
        "Where is my order #48213? It was supposed to arrive on Friday.",
        "Refunds are issued within 5 business days.",
        "我的订单什么时候到？退款需要多长时间？",
        "Mixed 中文 and English, emoji 🙂 and tabs\tand newlines\n",
    ],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(tokenizer):
    for tok in (IM_START, IM_END, "<|endoftext|>"):
        assert len(tokenizer(tok, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.eos_token == IM_END


def test_chat_template(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "退货"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n退货<|im_end|>\n<|im_start|>assistant\n"
    )
    default = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert default.startswith("<|im_start|>system\nYou are a helpful customer service assistant.")


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_deterministic(tmp_path, model_dir):
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(model_dir)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _digest(other)["model.safetensors"] != _digest(model_dir)["model.safetensors"]


def test_init_tiny_command(tmp_path):
    from click.testing import CliRunner

    from retrain.tiny_model import init_tiny_command

    result = CliRunner().invoke(init_tiny_command, [str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert "FLYWHEEL_BASE_MODEL=" in result.output
