"""Registry.load: catalog versions as a PeftModel on the recorded base, compared with PEFT loading them itself."""

from __future__ import annotations

import pytest
import torch

from workers.tinymodels import load_base

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROBE = torch.tensor([[1, 5, 9, 13, 17, 21]])


def logits(model) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def peft_reference(base_folder, adapter_folder, name="default"):  # type: ignore[no-untyped-def]
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base_folder), str(adapter_folder), adapter_name=name).eval()


def check_loaded(model, names, trainable):  # type: ignore[no-untyped-def]
    status = model.get_model_status()
    assert sorted(status.available_adapters) == sorted(names) and status.active_adapters == [names[0]]
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad is trainable for p in lora)  # frozen unless training was asked for


@pytest.fixture
def catalog(tmp_path, tiny):  # type: ignore[no-untyped-def]
    from registry import Registry

    with Registry(home=tmp_path / "home") as reg:
        reg.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        reg.register(tiny["legal"], name="legal", base_path=tiny["llama"])
        yield reg


def test_one_version_loads_frozen_on_its_recorded_base_with_peft_s_logits(catalog, tiny):
    from peft import PeftModel

    model = catalog.load("tone:1")
    assert isinstance(model, PeftModel) and not model.training
    check_loaded(model, ["tone"], trainable=False)
    torch.testing.assert_close(logits(model), logits(peft_reference(tiny["llama"], tiny["tone"])))
    assert not torch.allclose(logits(model), logits(load_base(tiny["llama"])))  # the adapter is really applied


def test_several_versions_load_by_name_and_switch(catalog, tiny):
    model = catalog.load(["legal:1", "tone"], is_trainable=True)
    check_loaded(model, ["legal", "tone"], trainable=True)
    torch.testing.assert_close(logits(model), logits(peft_reference(tiny["llama"], tiny["legal"])))
    model.set_adapter("tone", inference_mode=True)
    torch.testing.assert_close(logits(model), logits(peft_reference(tiny["llama"], tiny["tone"])))


def test_a_given_base_model_is_used_and_two_versions_of_one_adapter_get_distinct_names(catalog, tiny):
    catalog.register(tiny["tone2"], name="tone", base_path=tiny["llama"])  # tone:2
    base = load_base(tiny["llama"])
    model = catalog.load(["tone:1", "tone:2"], base_model=base)
    assert model.base_model.model is base
    check_loaded(model, ["tone_v1", "tone_v2"], trainable=False)


def test_load_through_a_server_matches_embedded(server, tiny, tmp_path, monkeypatch):
    from registry.remote import RemoteRegistry

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with RemoteRegistry(server.url, token=server.admin_token) as remote:
        remote.register(tiny["tone"], name="tone", base_path=tiny["llama"])
        model = remote.load("tone")
        check_loaded(model, ["tone"], trainable=False)
        torch.testing.assert_close(logits(model), logits(peft_reference(tiny["llama"], tiny["tone"])))
        cached = list((tmp_path / "cache" / "adreg" / "versions").iterdir())
        assert [p.name.split("-")[0] for p in cached] == ["tone"]
        remote.load("tone")  # the second load reads the verified cache: still one folder
        assert list((tmp_path / "cache" / "adreg" / "versions").iterdir()) == cached
