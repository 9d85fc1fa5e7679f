"""DPO job config: dataclass defaults < YAML file < CLI overrides; bad keys and values are errors."""

import pytest

from retrain.config import ConfigError, DPOJobConfig, help_table, load_config
from retrain.settings import PACKAGE_DIR


def test_defaults_are_the_seed_incremental_ones():
    cfg = DPOJobConfig()
    assert (cfg.beta, cfg.learning_rate, cfg.num_train_epochs) == (0.1, 1e-6, 1.0)


def test_shipped_7b_and_tiny_configs():
    big = load_config(PACKAGE_DIR / "configs" / "7b.yaml")
    assert (big.beta, big.learning_rate, big.num_train_epochs) == (0.1, 1e-6, 1.0)
    tiny = load_config(PACKAGE_DIR / "configs" / "tiny.yaml")
    assert tiny.learning_rate > 1e-4 and tiny.max_length <= 256


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
