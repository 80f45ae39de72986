"""Secure mode (`WDS_SECURE=1`, i.e. `utils.enforce_security`) in the Python layer: opening `pipe:` URLs, local
files and GOPEN_REWRITE'd URLs, unpickling and torch.load are refused with webdataset's `ValueError`, beside
webdataset itself wherever it covers the case. (The Rust reader's own refusal is tested with the core.)"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset
import webdataset.autodecode
import webdataset.cache
import webdataset.utils

import fastwds
import fastwds.autodecode
import fastwds.cache
import fastwds.dataset
import fastwds.filters
import fastwds.utils
from conftest import reference
from fastwds.cli import main

fgopen = importlib.import_module("fastwds.gopen")
wgopen = importlib.import_module("webdataset.gopen")
BOTH = {"fastwds": (fgopen, fastwds), "webdataset": (wgopen, webdataset)}


@pytest.fixture
def secure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secure mode on in both libraries, as WDS_SECURE=1 at import would set it."""
    monkeypatch.setattr(fastwds.utils, "enforce_security", True)
    monkeypatch.setattr(webdataset.utils, "enforce_security", True)


def test_enforce_security_comes_from_wds_secure_at_import_in_both_libraries(tmp_path: Path) -> None:
    script = (
        "import os, fastwds.utils, webdataset.utils\nfrom fastwds import gopen as g\n"
        "print(fastwds.utils.enforce_security, webdataset.utils.enforce_security)\n"
        "os.environ['WDS_SECURE'] = '0'\n"  # read once, at import: later changes do not count
        f"try:\n    g({str(tmp_path / 'x')!r}, 'wb')\nexcept ValueError as e:\n    print('refused')\n"
    )
    for value, printed in (("1", "True True\nrefused\n"), ("0", "False False\n")):
        env = dict(os.environ, WDS_SECURE=value)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout == printed


def test_setting_wds_secure_after_import_changes_nothing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WDS_SECURE", "1")
    (tmp_path / "a").write_bytes(b"data")
    for g, _ in BOTH.values():
        with g.gopen(str(tmp_path / "a")) as stream:
            assert stream.read() == b"data"


@pytest.mark.parametrize("library", sorted(BOTH))
@pytest.mark.parametrize("mode", ["rb", "wb"])
def test_gopen_refuses_pipes_local_files_and_file_urls(
    secure, tmp_path: Path, library: str, mode: str
) -> None:
    g, _ = BOTH[library]
    target = tmp_path / "exists"
    target.write_bytes(b"x")
    for url in ("pipe:echo hello", str(target), f"file://{target}", str(tmp_path / "new")):
        with pytest.raises(ValueError, match="pipe|local"):
            g.gopen(url, mode)
    assert target.read_bytes() == b"x" and not (tmp_path / "new").exists()
    # `-` is stdin/stdout in both, secure or not.
    assert g.gopen("-", mode) is (sys.stdin.buffer if mode == "rb" else sys.stdout.buffer)


@pytest.mark.parametrize("library", sorted(BOTH))
def test_gopen_refuses_rewritten_urls(secure, monkeypatch, library: str) -> None:
    g, _ = BOTH[library]
    monkeypatch.setenv("GOPEN_REWRITE", "http://a/=http://b/")
    with pytest.raises(ValueError, match="rewrite"):
        g.gopen("http://a/shard.tar")


@pytest.mark.parametrize("library", sorted(BOTH))
def test_decoding_refuses_pickles_and_torch_load(secure, library: str) -> None:
    autodecode = fastwds.autodecode if library == "fastwds" else webdataset.autodecode
    pickled = pickle.dumps({"a": 1})
    with pytest.raises(ValueError, match="(?i)unpickl"):
        autodecode.unpickle_loads(pickled)
    with pytest.raises(ValueError, match="torch.load"):
        autodecode.torch_loads(b"not even a torch file")
    for field in ("pyd", "pickle", "pkl", "pth"):
        # A sample's decoder reports the field as a DecodingError caused by the refusal, in both libraries.
        with pytest.raises(autodecode.DecodingError) as info:
            autodecode.Decoder([])({"__key__": "k", field: pickled})
        assert isinstance(info.value.__cause__, ValueError), field
    # The other fields still decode.
    assert autodecode.Decoder([])({"__key__": "k", "cls": b"3", "json": b"[1]"}) == {
        "__key__": "k",
        "cls": 3,
        "json": [1],
    }


def _shard_with_pickles(path: Path) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in (("a.pyd", pickle.dumps([1, 2])), ("a.cls", b"7"), ("b.pickle", pickle.dumps(3))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_the_first_api_refuses_to_unpickle_fields(secure, monkeypatch, tmp_path: Path) -> None:
    url = _shard_with_pickles(tmp_path / "p.tar")

    # An opener of the user's own: the shard is read in secure mode; only its pickles are refused.
    def make(**kw):
        return fastwds.dataset.WebDataset(url, decoder="rgb", opener=lambda u: open(u, "rb"), **kw)

    with pytest.raises(ValueError, match="(?i)unpickl"):
        list(make())
    with pytest.raises(ValueError, match="(?i)unpickl"):
        list(fastwds.dataset.WebDataset(url, container="pyd", opener=lambda u: open(u, "rb")))
    monkeypatch.setattr(fastwds.utils, "enforce_security", False)
    assert [s.get("pyd", s.get("pickle")) for s in make()] == [[1, 2], 3]


def test_xdecode_refuses_pickles_where_webdataset_unpickles(secure) -> None:
    sample = {"__key__": "k", "x.pyd": pickle.dumps(5)}
    with pytest.raises(ValueError, match="(?i)unpickl"):
        list(fastwds.filters.xdecode()([dict(sample)]))
    # The reference's xdecode has no check (see README, "Secure mode").
    assert list(webdataset.filters.xdecode()([dict(sample)]))[0]["x.pyd"] == 5


@pytest.mark.parametrize("library", sorted(BOTH))
def test_the_cache_refuses_to_download_from_pipes(secure, tmp_path: Path, library: str) -> None:
    cache = fastwds.cache if library == "fastwds" else webdataset.cache
    files = cache.FileCache(cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="pipe"):
        reference(lambda: files.get_file("pipe:cat /etc/hostname"))
    with pytest.raises(ValueError, match="pipe"):
        reference(lambda: list(cache.StreamingOpen()(["pipe:cat /etc/hostname"])))
    assert os.listdir(tmp_path) == []


def test_the_cache_opens_local_files_as_webdataset_does(secure, tmp_path: Path) -> None:
    url = _shard_with_pickles(tmp_path / "p.tar")
    for cache in (fastwds.cache, webdataset.cache):
        for stage in (cache.FileCache(cache_dir=str(tmp_path)), cache.StreamingOpen()):
            opened = reference(lambda stage=stage: list(stage([url])))
            opened[0]["stream"].close()
            assert opened[0]["local_path"] == url


@pytest.mark.parametrize("library", sorted(BOTH))
def test_writers_refuse_local_files_and_pipes_but_write_file_objects(
    secure, tmp_path: Path, library: str
) -> None:
    _, wds = BOTH[library]
    for target in (str(tmp_path / "out.tar"), f"pipe:cat > {tmp_path / 'piped.tar'}"):
        with pytest.raises(ValueError, match="pipe|local"):
            wds.TarWriter(target)
    with pytest.raises(ValueError, match="pipe|local"):
        wds.ShardWriter(str(tmp_path / "shard-%06d.tar"), maxcount=10, verbose=0)
    assert os.listdir(tmp_path) == []
    stream = io.BytesIO()
    with wds.TarWriter(stream) as sink:
        sink.write({"__key__": "a", "txt": "hello"})
    assert tarfile.open(fileobj=io.BytesIO(stream.getvalue())).getnames() == ["a.txt"]


def test_cli_create_refuses_commands_and_local_files(secure, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.txt").write_text("secret")
    for source in ("pipe:echo hi", str(tmp_path / "a.txt")):
        listing = tmp_path / "list.txt"
        listing.write_text(f"a.txt {source}\n")
        assert main(["create", str(listing), "-o", str(tmp_path / "out.tar")]) == 1
        err = capsys.readouterr().err
        assert "WDS_SECURE" in err and "list.txt:1" in err
        assert sorted(os.listdir(tmp_path)) == ["a.txt", "list.txt"]
