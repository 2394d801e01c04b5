"""Hydra's composition errors condensed to one line (the CLI cases are in test_bad_inputs.py)."""
from saefw.app.hydra_errors import StderrGate, is_composition_error, one_line
from saefw.registry import discover


def test_unknown_option_lists_the_options():
    text = ("In 'config': Could not find 'arch/nope'\n\nAvailable options in 'arch':\n\tgated\n\tl1\n"
            "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n\n"
            "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n")
    assert one_line(text) == "arch=nope: Could not find 'arch/nope'; available options in 'arch': gated, l1"


def test_unknown_key_lists_the_keys_of_its_config():
    discover()
    text = ("Could not override 'arch.nope'.\nTo append to your config use +arch.nope=1\n"
            "Key 'nope' not in 'L1Config'\n    full_key: arch.nope\n    object_type=L1Config\n")
    assert one_line(text) == ("arch.nope: unknown key 'nope' (L1Config); valid keys there: unit_norm_decoder, "
                              "init_decoder_norm")


def test_wrong_type_names_the_value():
    text = ("Error merging override layer=abc\nValue 'abc' of type 'str' could not be converted to Integer\n"
            "    full_key: layer\n    object_type=RunConfig\n")
    assert one_line(text) == "layer=abc: Value 'abc' of type 'str' could not be converted to Integer"


def test_a_crash_is_not_a_composition_error():
    assert not is_composition_error("Traceback (most recent call last):\n  File ...\nPicklingError: x")


def test_gate_holds_then_passes_through(capsys):
    import sys

    real = sys.stderr
    gate = StderrGate(real)
    gate.write("held ")
    assert gate.captured() == "held " and capsys.readouterr().err == ""
    gate.release()
    gate.write("through")
    assert capsys.readouterr().err == "held through"
