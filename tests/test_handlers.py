"""Exception handlers: what each returns, and what a stage given it does with a failing sample."""

import pytest
import webdataset.filters as W
import webdataset.handlers as WH

import fastwds.filters as F
import fastwds.handlers as H


def fail_on_three(x):
    if x == 3:
        raise ZeroDivisionError("sample three")
    return x * 10


def run(handler):
    return list(F.map(fail_on_three, handler=handler)(iter(range(6))))


def test_same_names_as_reference():
    names = [
        "reraise_exception",
        "ignore_and_continue",
        "warn_and_continue",
        "ignore_and_stop",
        "warn_and_stop",
    ]
    for name in names:
        assert callable(getattr(H, name)) and callable(getattr(WH, name))
    assert F.reraise_exception is H.reraise_exception


def test_direct_results():
    exn = KeyError("x")
    with pytest.raises(KeyError):
        H.reraise_exception(exn)
    assert H.ignore_and_continue(exn) is True
    assert H.ignore_and_stop(exn) is False
    with pytest.warns(UserWarning) as record:
        assert H.warn_and_continue(exn) is True
        assert H.warn_and_stop(exn) is False
    assert [str(w.message) for w in record] == [repr(exn), repr(exn)]


def test_reraise_stops_with_the_error():
    with pytest.raises(ZeroDivisionError, match="sample three"):
        run(H.reraise_exception)


def test_continue_handlers_skip_the_sample():
    expected = list(W.map(fail_on_three, handler=WH.ignore_and_continue)(iter(range(6))))
    assert expected == [0, 10, 20, 40, 50]
    assert run(H.ignore_and_continue) == expected
    with pytest.warns(UserWarning, match="ZeroDivisionError\\('sample three'\\)"):
        assert run(H.warn_and_continue) == expected


def test_stop_handlers_end_the_stage():
    expected = list(W.map(fail_on_three, handler=WH.ignore_and_stop)(iter(range(6))))
    assert expected == [0, 10, 20]
    assert run(H.ignore_and_stop) == expected
    with pytest.warns(UserWarning, match="sample three"):
        assert run(H.warn_and_stop) == expected


@pytest.mark.parametrize(
    "stage",
    [
        lambda h: F.to_tuple("a", handler=h),
        lambda h: F.rename(b="a", handler=h),
        lambda h: F.map_dict(a=int, handler=h),
        lambda h: F.map(lambda s: s["a"], handler=h),
    ],
)
def test_every_handler_taking_stage(stage):
    data = [{"__key__": "0", "a": "1"}, {"__key__": "1"}, {"__key__": "2", "a": "3"}]
    with pytest.warns(UserWarning):
        assert len(list(stage(H.warn_and_continue)(iter([dict(d) for d in data])))) == 2
    assert len(list(stage(H.ignore_and_stop)(iter([dict(d) for d in data])))) == 1
    with pytest.raises(Exception):  # noqa: B017 - the stages raise KeyError or ValueError here
        list(stage(H.reraise_exception)(iter([dict(d) for d in data])))


def test_map_tuple_handler():
    data = [(1, "a"), (2, None), (3, "c")]
    with pytest.warns(UserWarning, match="TypeError"):
        out = list(F.map_tuple(None, str.upper, handler=H.warn_and_continue)(iter(data)))
    assert out == [(1, "A"), (3, "C")]
