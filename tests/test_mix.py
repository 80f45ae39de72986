"""RandomMix/RoundRobin against webdataset.mix 1.0.2, and the helpers of fastwds.utils they build on."""

import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import webdataset.mix as WM
import webdataset.utils as WU

import fastwds.mix as M
import fastwds.utils as U


def lists():
    return [list(range(0, 5)), list(range(100, 103)), list(range(200, 208))]


# ---------------------------------------------------------------- RoundRobin


@pytest.mark.parametrize("longest", [False, True])
def test_round_robin_matches_reference(longest):
    ours = list(M.RoundRobin(lists(), longest=longest))
    assert ours == list(WM.RoundRobin(lists(), longest=longest))
    if longest:
        assert sorted(ours) == sorted(x for src in lists() for x in src)
    else:
        assert ours == [0, 100, 200, 1, 101, 201, 2, 102, 202, 3]


def test_round_robin_is_reiterable_and_handles_no_datasets():
    rr = M.RoundRobin(lists(), longest=True)
    every = [0, 100, 200, 1, 101, 201, 2, 102, 202, 3, 203, 4, 204, 205, 206, 207]
    assert list(rr) == every
    assert list(rr) == every, "a second pass starts over"
    assert list(M.RoundRobin([])) == []
    assert list(M.RoundRobin([], longest=True)) == []


# ---------------------------------------------------------------- RandomMix


@pytest.mark.parametrize("probs", [None, [0.2, 0.3, 0.5], [1, 0, 3]])
@pytest.mark.parametrize("longest", [False, True])
def test_random_mix_same_sequence_as_reference_for_same_global_seed(probs, longest):
    for seed in (0, 5):
        random.seed(seed)
        with np.errstate(invalid="ignore"):  # the reference divides 0 by 0 once only zero weights are left
            ref = list(WM.RandomMix(lists(), probs=probs, longest=longest))
        random.seed(seed)
        ours = list(M.RandomMix(lists(), probs=probs, longest=longest))
        assert ours == ref
        if longest:
            assert sorted(ours) == sorted(x for src in lists() for x in src)


def test_random_mix_weights():
    random.seed(1)
    big = [iter(lambda: "a", None), iter(lambda: "b", None)]
    out = [x for _, x in zip(range(4000), M.random_samples(big, [0.9, 0.1]))]
    assert 3400 < out.count("a") < 3800


def test_random_mix_does_not_mutate_its_arguments():
    sources = [iter([1]), iter([2, 3])]
    probs = [1.0, 1.0]
    list(M.random_samples(sources, probs, longest=True))
    assert len(sources) == 2 and probs == [1.0, 1.0]


def test_mixers_are_iterable_datasets_with_torch():
    import torch.utils.data as data

    assert U.iterable_dataset_base() is data.IterableDataset
    mix = M.RoundRobin([list(range(4)), list(range(10, 14))])
    assert isinstance(mix, data.IterableDataset) and isinstance(mix, M.RoundRobin)
    assert isinstance(M.RandomMix([[1]]), data.IterableDataset)
    clone = pickle.loads(pickle.dumps(mix))
    assert isinstance(clone, data.IterableDataset) and list(clone) == list(mix)
    loader = data.DataLoader(mix, batch_size=None, num_workers=0)
    assert [int(x) for x in loader] == [0, 10, 1, 11, 2, 12, 3, 13]


def _python(code, **env):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **env)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_importing_the_modules_does_not_import_torch():
    code = (
        "import sys\n"
        "import fastwds.mix, fastwds.filters, fastwds.utils, fastwds.handlers\n"
        "print('torch' in sys.modules)\n"
    )
    assert _python(code) == "False\n"


def test_without_torch_the_base_is_object_and_mixers_still_iterate():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import fastwds.utils as U, fastwds.mix as M, fastwds.filters as F\n"
        "assert U.iterable_dataset_base() is object, U.iterable_dataset_base()\n"
        "rr = M.RoundRobin([[1, 2], [3, 4]])\n"
        "assert type(rr) is M.RoundRobin\n"
        "print(list(rr))\n"
        "print(F.default_collation_fn([(1, 'a'), (2, 'b')]))\n"
    )
    assert _python(code).splitlines() == ["[1, 3, 2, 4]", "(array([1, 2]), ['a', 'b'])"]


# ---------------------------------------------------------------- utils


def test_make_seed_matches_reference_for_ints_and_is_stable_for_strings():
    for args in [(0,), (1, 2, 3), (10**12, -5), (7, 0, 123456)]:
        assert U.make_seed(*args) == WU.make_seed(*args)
    code = "import fastwds.utils as U; print(U.make_seed('abc', 3))"
    seeds = set()
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=os.pathsep.join(sys.path))
        seeds.add(
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
        )
    assert len(seeds) == 1 and int(seeds.pop()) == U.make_seed("abc", 3)
    assert 0 <= U.make_seed("x", 2**70) < 2**31


def test_is_iterable_identity_safe_eval():
    for obj in ["s", b"b", [1], (1,), iter([]), {}, 3, None]:
        assert U.is_iterable(obj) == WU.is_iterable(obj)
    assert U.identity(4) == 4
    assert U.safe_eval("12") == 12
    with pytest.raises(ValueError):
        U.safe_eval("__import__('os')")


def test_lookup_sym():
    assert U.lookup_sym("RandomMix", [".mix"]) is M.RandomMix
    assert U.lookup_sym("nothere", [".mix", ".utils"]) is None


def test_repeatedly():
    assert list(U.repeatedly([1, 2, 3], nepochs=2)) == list(WU.repeatedly([1, 2, 3], nepochs=2))
    assert list(U.repeatedly([1, 2, 3], nbatches=5)) == [1, 2, 3, 1, 2]
    batches = [(["a"] * 3, [0] * 3), (["b"] * 3, [1] * 3)]
    assert (
        list(U.repeatedly(batches, nsamples=7))
        == list(WU.repeatedly(batches, nsamples=7))
        == batches + batches[:1]
    )
    # The batchsize argument is honoured (webdataset ignores it and always uses len(batch[0])).
    assert list(U.repeatedly(batches, nsamples=4, batchsize=lambda b: 2)) == batches
    assert list(U.repeatedly0([1, 2, 3], nepochs=2, nbatches=2)) == [1, 2, 1, 2]
    assert U.guess_batchsize(([1, 2], [3, 4])) == 2


def test_pytorch_worker_info_from_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    assert U.pytorch_worker_info() == (0, 1, 0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("WORKER", "1")
    monkeypatch.setenv("NUM_WORKERS", "3")
    assert U.pytorch_worker_info() == WU.pytorch_worker_info() == (2, 4, 1, 3)
    assert U.pytorch_worker_seed() == 2001


class _WorkerInfo(U.iterable_dataset_base()):
    def __iter__(self):
        yield U.pytorch_worker_info()


def test_pytorch_worker_info_inside_dataloader_workers(monkeypatch):
    import torch.utils.data as data

    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    loader = data.DataLoader(_WorkerInfo(), batch_size=None, num_workers=2)
    got = sorted(tuple(int(v) for v in item) for item in loader)
    assert got == [(0, 1, 0, 2), (0, 1, 1, 2)]


def test_deprecated_and_obsolete(monkeypatch):
    @U.deprecated
    def f():
        return 1

    @U.deprecated("use g")
    def g():
        return 2

    with pytest.warns(DeprecationWarning, match="deprecated function f"):
        assert f() == 1
    with pytest.warns(DeprecationWarning, match="Reason: use g"):
        assert g() == 2

    @U.obsolete(reason="gone")
    def h():
        return 3

    monkeypatch.delenv("ALLOW_OBSOLETE", raising=False)
    with pytest.raises(U.ObsoleteException, match="gone"):
        h()
    monkeypatch.setenv("ALLOW_OBSOLETE", "1")
    assert h() == 3


def test_compute_sample_weights_and_braces(tmp_path):
    assert list(U.compute_sample_weights([(1, 2), (4, 1)])) == list(
        WU.compute_sample_weights([(1, 2), (4, 1)])
    )
    for name in ("a1.tar", "a2.tar", "b1.tar"):
        (tmp_path / name).write_bytes(b"")
    found = sorted(os.path.basename(p) for p in U.glob_with_braces(str(tmp_path / "{a,b}1.tar")))
    assert found == ["a1.tar", "b1.tar"]
    assert U.fnmatch_with_braces("x-003.tar", "x-{000..005}.tar")
    assert not U.fnmatch_with_braces("x-009.tar", "x-{000..005}.tar")


def test_pipeline_stage_base():
    with pytest.raises(NotImplementedError):
        U.PipelineStage().run(iter([]))
