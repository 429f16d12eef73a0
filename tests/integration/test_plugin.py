"""The plugin wiring, through SGLang's real entry-point discovery, HookRegistry and parser."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest


def _entry_point(group: str, name: str):
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    assert len(matches) == 1, f"{group}:{name} not installed exactly once: {matches}"
    return matches[0]


def test_general_plugin_entry_point_resolves_to_register():
    from breccia_sglang.integration.plugin import register

    assert _entry_point("sglang.srt.plugins", "breccia").load() is register


def test_platform_entry_point_activates_on_cpu_and_names_a_real_platform(monkeypatch):
    from sglang.srt.platforms.cpu import CpuSRTPlatform
    from sglang.srt.platforms.device_mixin import PlatformEnum

    activate = _entry_point("sglang.srt.platforms", "breccia_cpu").load()
    monkeypatch.delenv("BRECCIA_SGLANG_CPU_PLATFORM", raising=False)
    qualname = activate()
    assert qualname == "breccia_sglang.integration.platform.BrecciaCpuPlatform"
    # Resolve it the way SGLang does.
    from sglang.srt.platforms import _load_platform_class

    platform = _load_platform_class(qualname)()
    assert isinstance(platform, CpuSRTPlatform)
    assert platform.is_out_of_tree() and platform._enum == PlatformEnum.OOT
    assert platform.get_default_attention_backend() == "torch_native"
    assert platform.get_dispatch_key_name() == "native"


def test_platform_is_inert_with_cuda_or_opt_out(monkeypatch):
    import torch

    from breccia_sglang.integration.platform import activate

    monkeypatch.setenv("BRECCIA_SGLANG_CPU_PLATFORM", "0")
    assert activate() is None
    monkeypatch.delenv("BRECCIA_SGLANG_CPU_PLATFORM")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert activate() is None


def test_platform_says_in_the_log_when_active(caplog, monkeypatch):
    from breccia_sglang.integration.platform import activate

    monkeypatch.delenv("BRECCIA_SGLANG_CPU_PLATFORM", raising=False)
    with caplog.at_level("INFO", logger="breccia_sglang.integration.platform"):
        activate()
    assert "activating the CPU platform" in caplog.text


def test_register_twice_adds_each_hook_once():
    from sglang.srt.plugins.hook_registry import HookRegistry

    from breccia_sglang.integration import plugin

    plugin.register()
    first = {t: len(h) for t, h in HookRegistry._hooks.items()}
    plugin.register()
    assert {t: len(h) for t, h in HookRegistry._hooks.items()} == first
    ours = [t for t, _, _ in plugin.HOOKS]
    assert all(first.get(t, 0) >= 1 for t in ours)
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES, QUANTIZATION_CHOICES

    assert QUANTIZATION_CHOICES.count("breccia") == 1
    assert ATTENTION_BACKEND_CHOICES.count("breccia_triton") == 1
    assert ATTENTION_BACKEND_CHOICES.count("breccia_torch") == 1


@pytest.fixture(scope="module")
def loaded_plugins():
    # What launch_server does first: SGLang loads every plugin and applies the hooks.
    from sglang.srt.plugins import load_plugins

    load_plugins()


def test_cli_flag_sets_breccia_quantization(loaded_plugins, tmp_path):
    from sglang.srt.server_args import prepare_server_args

    args = prepare_server_args(["--model-path", str(tmp_path), "--breccia-format"])
    assert args.quantization == "breccia"
    plain = prepare_server_args(["--model-path", str(tmp_path)])
    assert plain.quantization is None
    spelled = prepare_server_args(["--model-path", str(tmp_path), "--quantization", "breccia"])
    assert spelled.quantization == "breccia"


def test_attention_backends_parse_and_enter_sglangs_registry(loaded_plugins, tmp_path):
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.server_args import prepare_server_args

    from breccia_sglang.integration.attention.choice import register_attention_backends

    args = prepare_server_args(["--model-path", str(tmp_path), "--breccia-format",
                                "--attention-backend", "breccia_triton"])
    assert args.attention_backend == "breccia_triton"
    register_attention_backends()
    register_attention_backends()
    assert {"breccia_triton", "breccia_torch"} <= set(ATTENTION_BACKENDS)


def test_cli_flag_conflicting_with_other_quantization_is_refused(loaded_plugins, tmp_path):
    from sglang.srt.server_args import prepare_server_args

    with pytest.raises(ValueError, match="--breccia-format .* conflicts with quantization='fp8'"):
        prepare_server_args(["--model-path", str(tmp_path), "--breccia-format", "--quantization", "fp8"])


def test_flag_survives_pickling_to_scheduler_processes(loaded_plugins, tmp_path):
    import pickle

    from sglang.srt.server_args import prepare_server_args

    args = prepare_server_args(["--model-path", str(tmp_path), "--breccia-format"])
    assert pickle.loads(pickle.dumps(args)).quantization == "breccia"


def test_quant_method_is_registered_with_sglang_when_model_config_is_checked(loaded_plugins):
    from breccia_sglang import names
    from breccia_sglang.integration.linear_method import BrecciaLinearMethod
    from breccia_sglang.integration.quant_config import BrecciaConfig, register_quant_method

    register_quant_method()  # what the BEFORE hook on ModelConfig._verify_quantization runs
    from sglang.srt.layers.linear import WEIGHT_LOADER_V2_SUPPORTED
    from sglang.srt.layers.quantization import QUANTIZATION_METHODS, get_quantization_config

    assert get_quantization_config("breccia") is BrecciaConfig
    assert QUANTIZATION_METHODS["breccia"] is BrecciaConfig
    assert "BrecciaLinearMethod" in WEIGHT_LOADER_V2_SUPPORTED
    assert BrecciaLinearMethod.__name__ == names.LINEAR_METHOD_CLASS  # the list matches class names
