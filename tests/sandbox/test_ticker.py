"""EpochTicker: ticks only inside running() windows, never early, stops on close()."""

import threading
import time

import pytest
import wasmtime

from sandbox import EpochTicker


def engine():
    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    return wasmtime.Engine(cfg)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_ticker_does_not_start_a_thread_until_first_use():
    ticker = EpochTicker(engine(), tick_s=0.001, idle_grace_s=0)
    assert ticker._thread is None
    ticker.close()


def test_ticker_ticks_while_a_window_is_open_and_parks_when_none_is():
    ticker = EpochTicker(engine(), tick_s=0.001, idle_grace_s=0)
    try:
        with ticker.running():
            assert wait_for(lambda: ticker.ticks >= 3)
        assert wait_for(lambda: ticker._active == 0)
        time.sleep(0.01)  # let a tick that was already due land
        parked = ticker.ticks
        time.sleep(0.02)
        assert ticker.ticks == parked
    finally:
        ticker.close()


def test_deadline_covers_the_partial_current_tick():
    ticker = EpochTicker(engine(), tick_s=0.01)
    assert ticker.deadline_ticks(100) == 11
    assert ticker.deadline_ticks(1) == 2
    ticker.close()


def test_windows_from_many_threads_share_one_ticker_thread():
    ticker = EpochTicker(engine(), tick_s=0.001, idle_grace_s=0)
    try:
        barrier = threading.Barrier(4)

        def work():
            with ticker.running():
                barrier.wait()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert ticker._active == 0
        assert len([t for t in threading.enumerate() if t.name == "sandbox-epoch-ticker"]) >= 1
    finally:
        ticker.close()


def test_close_stops_the_thread_and_refuses_new_windows():
    ticker = EpochTicker(engine(), tick_s=0.001, idle_grace_s=0)
    with ticker.running():
        pass
    thread = ticker._thread
    ticker.close()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(RuntimeError):
        with ticker.running():
            pass


def test_a_store_past_its_deadline_is_interrupted():
    eng = engine()
    ticker = EpochTicker(eng, tick_s=0.001)
    module = wasmtime.Module(eng, '(module (func (export "spin") (loop $l (br $l))))')
    store = wasmtime.Store(eng)
    try:
        with ticker.running():
            store.set_epoch_deadline(ticker.deadline_ticks(20))
            spin = wasmtime.Instance(store, module, []).exports(store)["spin"]
            with pytest.raises(wasmtime.Trap) as info:
                spin(store)
        assert info.value.trap_code == wasmtime.TrapCode.INTERRUPT
    finally:
        store.close()
        ticker.close()
