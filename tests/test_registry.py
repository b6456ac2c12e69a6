from dataclasses import dataclass

import pytest

from metalearn_cli.errors import ConfigError
from metalearn_cli.registry import Registry


@dataclass
class P:
    name: str = "a"
    size: int = 3


def test_build_passes_typed_params_and_wiring():
    reg: Registry[tuple] = Registry("thing")
    reg.register("a", params=P)(lambda params, extra: (params, extra))
    params, extra = reg.build({"name": "a", "size": 5}, extra=7)
    assert params == P("a", 5) and extra == 7
    assert reg.names() == ["a"]


def test_unknown_name_lists_the_valid_ones():
    reg: Registry[object] = Registry("thing")
    reg.register("a", params=P)(lambda params: params)
    with pytest.raises(ConfigError, match="unknown thing 'b'; choose one of: a"):
        reg.build({"name": "b"})


def test_wrong_type_and_unknown_key_are_config_errors():
    reg: Registry[object] = Registry("thing")
    reg.register("a", params=P)(lambda params: params)
    with pytest.raises(ConfigError, match="invalid thing 'a'"):
        reg.build({"name": "a", "size": "big"})
    with pytest.raises(ConfigError, match="invalid thing 'a'"):
        reg.build({"name": "a", "colour": 1})


def test_double_registration_and_params_without_name_are_refused():
    reg: Registry[object] = Registry("thing")
    reg.register("a", params=P)(lambda params: params)
    with pytest.raises(TypeError):
        reg.register("a", params=P)(lambda params: params)

    @dataclass
    class NoName:
        size: int = 1

    with pytest.raises(TypeError):
        reg.register("b", params=NoName)


def test_every_registry_names_the_torch_free_params_table():
    """Configs compose from metalearn_cli.params; the code registers with the same classes, no more, no less."""
    from metalearn_cli.components import REGISTRIES
    from metalearn_cli.params import PARAMS

    assert set(REGISTRIES) == set(PARAMS)
    for group, registry in REGISTRIES.items():
        assert registry.names() == sorted(PARAMS[group]), group
        for name in registry.names():
            assert registry.get(name).params is PARAMS[group][name], (group, name)
