"""The restricted unpickler: payloads that would run code are refused and nothing runs; data loads.

Every refusal test arms a payload that would create a marker file if it ran, and checks the marker is
still absent afterwards: refusing after the fact would not be enough.
"""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import subprocess

import numpy as np
import pytest
from legacy_pickles import Sample, cogmen_dumps, py2_dumps

from merc.data_manifests.errors import ManifestError, MercError
from merc.extract.importers import safe_pickle
from merc.extract.importers.safe_pickle import PickleReadError, PlainRecord, UnsafePickleError


class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _refused(data: bytes, marker, what: str, tmp_path) -> UnsafePickleError:
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as err:
        safe_pickle.load(path)
    assert not marker.exists(), "the payload ran"
    assert what in str(err.value) and str(path) in str(err.value)
    assert isinstance(err.value, ManifestError) and isinstance(err.value, MercError)
    return err.value


@pytest.mark.parametrize("proto", [0, 2, 4])
def test_os_system_via_reduce_is_refused_and_nothing_runs(tmp_path, proto):
    marker = tmp_path / "ran"
    data = pickle.dumps({"features": [_Payload(os.system, f"touch {marker}")]}, protocol=proto)
    _refused(data, marker, f"{os.system.__module__}.system", tmp_path)  # posix.system (nt.system on Windows)


def test_builtins_eval_and_exec_are_refused(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()"
    _refused(pickle.dumps(_Payload(builtins.eval, code)), marker, "builtins.eval", tmp_path)
    _refused(pickle.dumps(_Payload(builtins.exec, code)), marker, "builtins.exec", tmp_path)


def test_subprocess_popen_is_refused(tmp_path):
    marker = tmp_path / "ran"
    _refused(pickle.dumps([1, _Payload(subprocess.Popen, ["touch", str(marker)])]), marker, "subprocess.Popen",
             tmp_path)


def test_getattr_gadget_is_refused(tmp_path):
    """`getattr(os, "system")` is the classic way around a module block-list."""
    marker = tmp_path / "ran"
    data = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch "
            + str(marker).encode() + b"'\ntR.")
    _refused(data, marker, "builtins.getattr", tmp_path)
    _refused(data.replace(b"getattr", b"setattr"), marker, "builtins.setattr", tmp_path)


def test_python2_builtin_names_are_checked_after_mapping(tmp_path):
    marker = tmp_path / "ran"
    data = b"c__builtin__\neval\n(S'open(" + repr(str(marker)).encode() + b", \"w\").close()'\ntR."
    _refused(data, marker, "builtins.eval", tmp_path)


def test_a_global_of_an_unknown_module_called_is_refused(tmp_path):
    """A module this Python cannot import could be anything: its globals are never called."""
    marker = tmp_path / "ran"
    data = b"cevil_module_not_installed\nrun\n(S'touch " + str(marker).encode() + b"'\ntR."
    err = _refused(data, marker, "evil_module_not_installed.run", tmp_path)
    assert "called" in str(err)
    _refused(b"cevil_module_not_installed\nrun\n)R.", marker, "evil_module_not_installed.run", tmp_path)


def test_a_class_of_an_importable_module_is_refused(tmp_path):
    marker = tmp_path / "ran"
    _refused(pickle.dumps(collections.Counter(a=1)), marker, "collections.Counter", tmp_path)


def test_numpy_arrays_nested_containers_and_scalars_load(tmp_path):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, (2.5, "x"), {3, 4}], "c": np.int64(7),
           "d": np.dtype("float16"), "e": collections.OrderedDict(k=[b"raw", bytearray(b"z")]),
           "f": collections.defaultdict(list, {"k": [None, True, 1 + 2j]}), "g": np.array(["M", "F"])}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        back = safe_pickle.loads(pickle.dumps(obj, protocol=proto), "x.pkl")
        np.testing.assert_array_equal(back["a"], obj["a"])
        assert back["a"].dtype == np.float32
        assert back["b"] == obj["b"] and back["c"] == 7 and back["d"] == np.float16
        assert back["e"] == obj["e"] and back["f"] == obj["f"] and list(back["g"]) == ["M", "F"]


def test_python2_pickles_load_with_latin1_text_and_arrays(tmp_path):
    """Protocol 2, `str` as byte strings, `__builtin__` names: as Python 2 wrote the IEMOCAP files."""
    obj = ({"Ses01F_impro01": ["M", "F"]}, {"Ses01F_impro01": [np.ones(3, np.float32), np.zeros(3, np.float32)]},
           {"Ses01F_impro01": np.array([[1.5, 2.5]])}, set(["Ses01F_impro01"]), ["Ses05M_script01_1"])
    data = py2_dumps(obj)
    assert b"__builtin__" in data and pickle.SHORT_BINSTRING in data
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    back = safe_pickle.load(path)
    assert back[0] == {"Ses01F_impro01": ["M", "F"]}
    np.testing.assert_array_equal(back[1]["Ses01F_impro01"][0], np.ones(3))
    np.testing.assert_array_equal(back[2]["Ses01F_impro01"], [[1.5, 2.5]])
    assert back[3] == {"Ses01F_impro01"} and back[4] == ["Ses05M_script01_1"]
    assert safe_pickle.loads(b"\x80\x02U\x04caf\xe9q\x00.") == "caf\xe9"  # a latin1 byte string


def test_cogmen_sample_becomes_a_plain_record_without_importing_cogmen(tmp_path):
    import sys

    text = np.arange(4, dtype=np.float32)
    data = cogmen_dumps({"train": [Sample("Ses01F_impro01", ["M"], [2], text, None, None, ["hi"])]})
    assert b"cogmen" in data and "cogmen" not in sys.modules
    back = safe_pickle.loads(data, "data_iemocap.pkl")
    rec = back["train"][0]
    assert isinstance(rec, PlainRecord) and isinstance(rec, dict)
    assert rec.record_class == "cogmen.Sample"
    assert rec["vid"] == rec.vid == "Ses01F_impro01" and rec.label == [2] and rec.sentence == ["hi"]
    np.testing.assert_array_equal(rec.text, text)
    assert "cogmen" not in sys.modules  # nothing was imported
    for proto in (0, 1, 2):  # Python 2 style instance pickles (copy_reg._reconstructor / NEWOBJ)
        back = safe_pickle.loads(cogmen_dumps_proto(proto), "p.pkl")
        assert back[0].vid == "v" and back[0].record_class == "cogmen.Sample"


def cogmen_dumps_proto(proto: int) -> bytes:
    import sys
    import types

    fake = types.ModuleType("cogmen")
    fake.Sample = Sample
    Sample.__module__, Sample.__qualname__ = "cogmen", "Sample"
    sys.modules["cogmen"] = fake
    try:
        return pickle.dumps([Sample("v", [], [], None, None, None, [])], protocol=proto)
    finally:
        del sys.modules["cogmen"]
        Sample.__module__, Sample.__qualname__ = "legacy_pickles", "Sample"


def test_a_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros(100)}, protocol=4)[:-40])
    with pytest.raises(PickleReadError, match="truncated") as err:
        safe_pickle.load(path)
    assert str(path) in str(err.value)
