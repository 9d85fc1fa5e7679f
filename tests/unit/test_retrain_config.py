"""DPO job config: dataclass defaults < YAML file < CLI overrides; bad keys and values are errors."""

import pytest

from retrain.config import ConfigError, DPOJobConfig, help_table, load_config
from retrain.settings import PACKAGE_DIR
from retrain.tiny_model import TINY_ARCH


def test_defaults_are_the_seed_incremental_ones():
    cfg = DPOJobConfig()
    assert (cfg.beta, cfg.learning_rate, cfg.num_train_epochs) == (0.1, 1e-6, 1.0)


def test_shipped_7b_and_tiny_configs():
    big = load_config(PACKAGE_DIR / "configs" / "7b.yaml")
    assert (big.beta, big.learning_rate, big.num_train_epochs) == (0.1, 1e-6, 1.0)
    tiny = load_config(PACKAGE_DIR / "configs" / "tiny.yaml")
    assert tiny.learning_rate > 1e-4 and tiny.max_length <= TINY_ARCH["max_position_embeddings"]


def test_precedence(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("beta: 0.5\nlearning_rate: 1e-4\nnum_train_epochs: 2\n")  # 1e-4: a string in YAML 1.1
    cfg = load_config(path, {"learning_rate": 3e-3, "beta": None, "max_steps": 7})
    assert cfg.beta == 0.5  # YAML over default; None override = flag not given
    assert cfg.learning_rate == 3e-3  # override over YAML
    assert cfg.num_train_epochs == 2.0 and isinstance(cfg.num_train_epochs, float)
    assert cfg.max_steps == 7 and cfg.lora_r == DPOJobConfig().lora_r  # override over default; default kept


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("betta: 0.1\n", "unknown keys"),
        ("beta: fast\n", "beta"),
        ("lora_r: 2.5\n", "lora_r"),
        ("bf16: 'yes'\n", "bf16"),
        ("beta: -1\n", "invalid value"),
        ("eval_fraction: 1.0\n", "invalid value"),
        ("- beta\n", "mapping"),
    ],
)
def test_bad_yaml(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_every_field_has_help():
    assert all(help_text for _, _, help_text in help_table())


def test_to_trl_maps_the_fields(tmp_path):
    pytest.importorskip("trl")
    cfg = load_config(None, {"beta": 0.3, "learning_rate": 2e-3, "max_length": 64})
    args = cfg.to_trl(tmp_path, use_cpu=True)
    assert (args.beta, args.learning_rate, args.max_length, args.use_cpu) == (0.3, 2e-3, 64, True)
    assert args.save_strategy == "no"


class _WordTokenizer:
    """One token per word; the chat template is the contents joined."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def apply_chat_template(self, messages, tokenize=False):
        return " ".join(m["content"] for m in messages)


def _row(prompt_words: int, answer_words: int = 2) -> dict:
    return {
        "prompt": [{"role": "user", "content": "w " * prompt_words}],
        "completion": [{"role": "assistant", "content": "a " * answer_words}],
    }


def test_rows_longer_than_max_length_are_left_out_and_none_fitting_is_a_clear_error():
    from retrain.training import fitting_rows, row_tokens

    tok = _WordTokenizer()
    short, long = _row(3), _row(30)
    assert row_tokens(tok, short) == 5
    assert row_tokens(tok, {"prompt": "def f():", "completion": " return 1"}) == 5  # text row: + end of text
    assert fitting_rows([short, long], tok, max_length=10) == [short]
    with pytest.raises(ValueError, match=r"max_length \(10 tokens; the shortest has 32\)"):
        fitting_rows([long], tok, max_length=10)
    assert fitting_rows([long], tok, max_length=10, required=False) == []


def test_a_preference_row_is_as_long_as_its_prompt_with_the_longer_answer():
    from retrain.training import fitting_rows, pair_tokens

    tok = _WordTokenizer()
    prompt = [{"role": "user", "content": "w w w"}]

    def pair(chosen_words: int, rejected_words: int) -> dict:
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "a " * chosen_words}],
            "rejected": [{"role": "assistant", "content": "b " * rejected_words}],
        }

    short, long_rejected = pair(2, 2), pair(2, 30)
    assert pair_tokens(tok, short) == 5 and pair_tokens(tok, long_rejected) == 33
    assert pair_tokens(tok, {"prompt": "def f():", "chosen": " return 1", "rejected": " pass"}) == 5
    assert fitting_rows([short, long_rejected], tok, max_length=10, length=pair_tokens) == [short]
