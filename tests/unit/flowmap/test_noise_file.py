"""`--noise FILE`: a file that is not a float .npy array gets a message saying what it is and what was
expected, never numpy's unpickling hint (and nothing is ever unpickled)."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

from flowmap.cli import main
from flowmap.generate import load_noise

WANT = r"expected a \.npy array \(numpy\.save\) of float noise, shape \(N, 1, 8, 8\)"


def _text(p):
    p.write_text("1.0 2.0\n3.0 4.0\n")


def _pickle(p):
    p.write_bytes(pickle.dumps([1.0, 2.0]))


def _zip(p):
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", b"")


def _empty(p):
    p.write_bytes(b"")


def _object_array(p):
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _strings(p):
    np.save(p, np.array([["a"] * 64]).reshape(1, 1, 8, 8))


def _nan(p):
    np.save(p, np.full((2, 1, 8, 8), np.nan, np.float32))


CASES = [
    (_text, "this is a text file \\(it starts '1.0 2.0'\\); " + WANT),
    (_pickle, "this is a Python pickle; " + WANT),
    (_zip, "this is a zip archive"),
    (_empty, "this is an empty file; " + WANT),
    (_object_array, "a .npy file, but an object array, which only unpickling could read; " + WANT),
    (_strings, "holds a <U1 array; " + WANT),
    (_nan, "holds NaN or inf"),
]


@pytest.mark.parametrize(("write", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_wrong_noise_files_say_what_they_are(tmp_path, write, message):
    path = tmp_path / "x.npy"
    write(path)
    with pytest.raises(ValueError, match=message) as e:
        load_noise(str(path), [1, 8, 8])
    assert "allow_pickle" not in str(e.value) and "pickled (object) data" not in str(e.value)


def test_cli_text_noise_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "x.npy"
    _text(path)
    assert main(["sample", "--model", "digits", "--noise", str(path), "--out", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a text file" in err and "expected a .npy array" in err


def test_missing_noise_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="cannot read it .*No such file"):
        load_noise(str(tmp_path / "absent.npy"), [2])


def test_good_noise_still_loads(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((3, 2), np.float64))
    assert load_noise(str(tmp_path / "z.npy"), [2]).shape == (3, 2)
