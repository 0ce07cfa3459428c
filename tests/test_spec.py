"""Backend specs from the option, the environment and the config file."""

from __future__ import annotations

import pytest

from openseg_r.errors import ConfigError
from openseg_r.lmm import NoLMM, ScriptedLMM
from openseg_r.lmm.openai_compat import OpenAICompatibleLMM
from openseg_r.lmm.replay import RecordingLMM, ReplayLMM
from openseg_r.lmm.spec import backend_from_spec, configured_spec


def test_openai_and_ollama_specs(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    backend = backend_from_spec("openai:qwen2.5-vl-7b@http://127.0.0.1:8000/v1")
    assert isinstance(backend, OpenAICompatibleLMM)
    assert backend.model_id == "qwen2.5-vl-7b" and backend.base_url == "http://127.0.0.1:8000/v1"
    assert "sk-secret-value" not in repr(backend.chat) and "sk-secret-value" not in backend.cache_identity
    ollama = backend_from_spec("ollama:qwen2.5vl:7b")
    assert ollama.model_id == "qwen2.5vl:7b" and ollama.base_url == "http://127.0.0.1:11434/v1"
    assert backend_from_spec("openai:gpt-4o").base_url is None


def test_other_specs(tmp_path):
    script = tmp_path / "s.json"
    script.write_text("{}")
    assert isinstance(backend_from_spec("none"), NoLMM)
    assert isinstance(backend_from_spec(f"scripted:{script}"), ScriptedLMM)
    recorded = tmp_path / "calls.jsonl"
    recorded.write_text("")
    assert isinstance(backend_from_spec(f"replay:{recorded}"), ReplayLMM)
    assert isinstance(backend_from_spec(f"scripted:{script}", record=tmp_path / "r.jsonl"), RecordingLMM)
    for bad in ["openai:", "magic:x", "hf", f"replay:{tmp_path / 'missing.jsonl'}", "hf:/nonexistent/model"]:
        with pytest.raises(ConfigError):
            backend_from_spec(bad)


def test_spec_sources_in_order(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('lmm = "scripted:from-config.json"\n')
    monkeypatch.setenv("OPENSEG_R_CONFIG", str(config))
    monkeypatch.delenv("OPENSEG_R_LMM", raising=False)
    assert configured_spec(None) == "scripted:from-config.json"
    monkeypatch.setenv("OPENSEG_R_LMM", "ollama:llava")
    assert configured_spec(None) == "ollama:llava"
    assert configured_spec("openai:x@http://h/v1") == "openai:x@http://h/v1"
    config.write_text("lmm = [1, 2")
    monkeypatch.delenv("OPENSEG_R_LMM")
    with pytest.raises(ConfigError, match="not valid TOML"):
        configured_spec(None)
    monkeypatch.setenv("OPENSEG_R_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="config file not found"):
        configured_spec(None)
