"""Adapter registry: atomic versions, never a reused name, metadata with lineage and hashes, the pointer."""

import json
import os

import pytest

from retrain.registry import Registry, RegistryError, parse_version, sha256_file


def adapter(tmp_path, name: str, payload: bytes = b"weights"):
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (d / "adapter_model.safetensors").write_bytes(payload)
    return d


def meta(**extra):
    return {
        "base_model": "tiny",
        "parent_version": None,
        "job_id": "j1",
        "pair_ids": ["a", "b"],
        "verdict": "accepted",
        "eval": {"x": 1},
        **extra,
    }


def test_register_writes_a_whole_version_with_metadata(tmp_path):
    reg = Registry(tmp_path / "reg")
    v = reg.register("support", adapter(tmp_path, "a1", b"w1"), meta())
    assert v.name == "support@v1" and v.path == reg.root / "support" / "v1"
    m = json.loads((v.path / "metadata.json").read_text())
    assert m["version"] == "support@v1" and m["base_model"] == "tiny" and m["pair_ids"] == ["a", "b"]
    assert m["job_id"] == "j1" and m["created_at"] and m["eval"] == {"x": 1}
    assert m["sha256"] == sha256_file(v.path / "adapter_model.safetensors")
    reg.verify("support@v1")
    (v.path / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        reg.verify("support@v1")


def test_numbers_never_reused_rejected_included(tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.register("support", adapter(tmp_path, "a1"), meta())
    reg.register("support", adapter(tmp_path, "a2"), meta(verdict="rejected"))
    v3 = reg.register("support", adapter(tmp_path, "a3"), meta())
    assert v3.name == "support@v3"
    assert [v.name for v in reg.list("support")] == ["support@v1", "support@v2", "support@v3"]
    assert reg.show("support@v2").rejected


def test_crash_leaves_no_partial_version(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "reg")
    reg.register("support", adapter(tmp_path, "a1"), meta())

    def crash(src, dst):
        raise OSError("disk died during rename")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError):
        reg.register("support", adapter(tmp_path, "a2"), meta())
    monkeypatch.undo()
    assert [v.name for v in reg.list("support")] == ["support@v1"]
    assert not [p for p in (reg.root / "support").iterdir() if p.name.startswith(".tmp-")]
    # a kill -9 cannot run the cleanup: a leftover temp dir is invisible and removed at the next start
    (reg.root / "support" / ".tmp-dead").mkdir()
    assert [v.name for v in reg.list("support")] == ["support@v1"]
    assert reg.clean_temp("support") == 1
    assert reg.register("support", adapter(tmp_path, "a3"), meta()).name == "support@v2"


def test_not_an_adapter(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="adapter_config"):
        Registry(tmp_path / "reg").register("support", tmp_path / "empty", meta())


def test_promote_and_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    for i in (1, 2):
        reg.register("support", adapter(tmp_path, f"a{i}"), meta())
    reg.register("support", adapter(tmp_path, "bad"), meta(verdict="rejected"))
    assert reg.current("support") is None
    reg.promote("support@v1")
    reg.promote("support@v2")
    reg.promote("support@v2")  # idempotent
    assert reg.pointer("support")["history"] == ["support@v1"]
    with pytest.raises(RegistryError, match="rejected"):
        reg.promote("support@v3")
    assert reg.rollback("support")["version"] == "support@v1"
    assert reg.rollback("support")["version"] is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback("support")


@pytest.mark.parametrize("name", ["support", "support@", "support@2", "@v1", "support@v1x"])
def test_bad_version_names(name):
    with pytest.raises(RegistryError):
        parse_version(name)


def test_unknown_version(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(tmp_path).show("support@v9")
