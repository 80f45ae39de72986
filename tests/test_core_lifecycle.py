"""The Rust core's threads and `pipe:` children: started on iteration only, gone after break/close/Ctrl-C,
fresh after fork, and usable from torch DataLoader workers (fork and spawn)."""

from __future__ import annotations

import _thread
import gc
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import webdataset

from conftest import pids_with, wait_until
from fastwds import _core


def task_count() -> int:
    """OS threads of this process (Rust threads included, which `threading` does not see)."""
    return len(os.listdir("/proc/self/task"))


def live_pids(marker: str) -> list[int]:
    """Processes (zombies too) whose command line contains `marker`."""
    return pids_with(marker)


def unreaped_children(pids: list[int]) -> list[int]:
    """Those of `pids` that are zombies this process never reaped."""
    left = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid():
            left.append(pid)
    return left


def stall_seconds() -> str:
    """A `sleep` duration unique to this call, so its command line marks exactly our child."""
    return f"60.{random.randrange(10**8):08d}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Eight shards of 20 samples written by webdataset's TarWriter."""
    d = tmp_path_factory.mktemp("life")
    urls = []
    for s in range(8):
        path = d / f"shard-{s}.tar"
        with webdataset.TarWriter(str(path)) as sink:
            for i in range(20):
                sink.write({"__key__": f"{s}-{i:03d}", "txt": f"sample {s} {i}".encode() * 20})
        urls.append(str(path))
    return urls


def expected(urls: list[str]) -> list[tuple[str, str, bytes]]:
    return [(s["__url__"], s["__key__"], s["txt"]) for s in _core.ShardReader(urls, threads=1)]


def test_import_and_construction_start_no_thread(shards: list[str]) -> None:
    code = (
        "import os, sys\n"
        "n = lambda: len(os.listdir('/proc/self/task'))\n"
        "before = n()\n"
        "import fastwds\n"
        "from fastwds import _core\n"
        "imported = n()\n"
        "r = _core.ShardReader(sys.argv[1:], threads=4)\n"
        "it = iter(r)\n"
        "print(before, imported, n(), it.threads_running)\n"
    )
    # numpy's OpenBLAS starts its own thread pool at import (numpy's doing, not fastwds's): keep it out.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, *shards], capture_output=True, text=True, check=True, env=env
    )
    before, imported, constructed, running = map(int, out.stdout.split())
    assert (imported, constructed, running) == (before, before, 0)


def test_threads_start_on_next_and_end_with_the_iteration(shards: list[str]) -> None:
    baseline = task_count()
    reader = _core.ShardReader(shards, threads=3)
    it = iter(reader)
    assert task_count() == baseline
    assert it.threads_running == 0
    first = next(it)
    assert task_count() > baseline
    assert it.threads_running > 0
    rest = list(it)
    assert [(s["__url__"], s["__key__"], s["txt"]) for s in [first, *rest]] == expected(shards)
    assert wait_until(lambda: task_count() <= baseline, 2.0)
    assert it.threads_running == 0


@pytest.mark.parametrize("how", ["del", "close"])
def test_break_leaves_no_thread_or_child_behind(shards: list[str], how: str) -> None:
    secs = stall_seconds()
    marker = f"sleep {secs}"
    urls = [f"pipe:cat {shards[0]}; sleep {secs}", *shards[1:4]]
    baseline = task_count()
    it = iter(_core.ShardReader(urls, threads=2))
    for sample in it:
        assert sample["__key__"] == "0-000"
        break
    # The command is still running (it sleeps after the tar): the test measures a real child.
    assert wait_until(lambda: live_pids(marker) != [], 2.0)
    children = live_pids(marker)
    assert task_count() > baseline
    start = time.monotonic()
    if how == "close":
        it.close()
        assert it.threads_running == 0
        with pytest.raises(StopIteration):
            next(it)
    del it, sample
    gc.collect()
    assert wait_until(lambda: task_count() <= baseline and not live_pids(marker), 2.0), (
        task_count(),
        baseline,
        live_pids(marker),
    )
    assert time.monotonic() - start < 2.0
    assert unreaped_children(children) == []


def test_close_before_and_after_start(shards: list[str]) -> None:
    it = iter(_core.ShardReader(shards))
    it.close()
    assert it.threads_running == 0
    assert list(it) == []
    it = iter(_core.ShardReader(shards, threads=2))
    next(it)
    it.close()
    assert it.threads_running == 0
    it.close()  # idempotent
    assert list(it) == []


@pytest.mark.parametrize("how", ["interrupt_main", "pthread_kill"])
def test_ctrl_c_while_waiting_on_a_stalled_pipe(how: str) -> None:
    secs = stall_seconds()
    marker = f"sleep {secs}"
    baseline = task_count()
    it = iter(_core.ShardReader([f"pipe:sleep {secs}"], threads=1))
    waiting = threading.Event()
    waiting.set()
    main = threading.main_thread().ident

    def interrupt() -> None:
        time.sleep(0.5)
        if waiting.is_set():
            if how == "interrupt_main":
                _thread.interrupt_main()
            else:
                signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt)
    start = time.monotonic()
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(it)
    finally:
        waiting.clear()
        interrupter.join()
    assert time.monotonic() - start < 3.0
    assert wait_until(lambda: task_count() <= baseline and not live_pids(marker), 2.0), (
        task_count(),
        baseline,
        live_pids(marker),
    )
    assert it.threads_running == 0


def test_reader_pickles_as_its_configuration(shards: list[str]) -> None:
    reader = _core.ShardReader(shards[:3], threads=2, prefetch=2, ordered=True, fields=["txt"], lcase=False)
    copy = pickle.loads(pickle.dumps(reader))
    assert isinstance(copy, _core.ShardReader)
    assert list(copy) == list(reader)
    members = pickle.loads(pickle.dumps(_core.ShardReader(shards[:1], members=True)))
    assert [m["fname"] for m in members] == [f"0-{i:03d}.txt" for i in range(20)]


def _after_fork_in_child(it: _core.SampleIterator, reader: _core.ShardReader, want: list) -> int:
    """Runs in the forked child; the exit code tells the parent what happened."""
    try:
        next(it)
    except RuntimeError:
        pass
    except BaseException:
        return 11
    else:
        return 10
    try:
        fresh = iter(reader)
        got = [(s["__url__"], s["__key__"], s["txt"]) for s in fresh]
        if fresh.threads_running != 0:
            return 13
    except BaseException:
        return 14
    return 0 if got == want else 12


def test_iterator_from_before_fork_refuses_and_a_fresh_one_works(shards: list[str]) -> None:
    reader = _core.ShardReader(shards[:4], threads=2)
    want = expected(shards[:4])
    it = iter(reader)
    first = next(it)
    assert it.threads_running > 0
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            code = _after_fork_in_child(it, reader, want)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's iterator is unaffected by the child.
    rest = list(it)
    assert [(s["__url__"], s["__key__"], s["txt"]) for s in [first, *rest]] == want


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_every_sample_once(shards: list[str], context: str) -> None:
    import torch

    import _core_dataset

    dataset = _core_dataset.CoreShardsDataset(shards)
    if context == "fork":
        # A parent that already read through the reader: the workers inherit it and start their own threads.
        assert sum(1 for _ in dataset) == 160
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=2, multiprocessing_context=context, timeout=60
    )
    samples = list(loader)
    got = Counter((s["__url__"], s["__key__"], s["txt"]) for s in samples)
    assert got == Counter(expected(shards))
    assert max(got.values()) == 1
    workers = {s["pid"] for s in samples}
    assert len(workers) == 2 and os.getpid() not in workers
