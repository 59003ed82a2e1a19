"""The pause seen from outside (optional, --proc-sampler): a thread polls /proc/PID/task/*/stat
and adds up the time during which any thread of the target was in 't' or 'T'. It costs CPU (a
pread per thread per sample), so the targets' own clock stamper is the main measure."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from common import state_of

STOPPED_STATES = frozenset(b"tT")


@dataclass
class PauseReading:
    any_thread_seconds: float = 0.0    # time during which at least one thread was stopped
    main_thread_seconds: float = 0.0   # time during which the main thread was stopped
    episodes: int = 0                  # how many separate stops (any thread) were seen
    first_stop_to_last_resume: float = 0.0
    samples: int = 0
    mean_sample_interval: float = 0.0  # resolution of the measurement


class PauseSampler:
    """Polls the target's thread states on its own thread while a dump runs.

    Each sample reads /proc/PID/task/TID/stat for every thread (pread on kept-open descriptors, so
    a sample costs a few microseconds per thread) and notes whether any thread, and whether the
    main thread, is in 't'/'T'. Time between two samples counts as stopped in proportion to how
    many of the two samples saw it stopped (the trapezoid rule), so the error is at most one sample
    interval per stop edge. The list of threads is refreshed every few milliseconds.
    """

    RELIST_SECONDS = 0.005

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pause-sampler", daemon=True)
        self._fds: dict[int, int] = {}
        self.reading = PauseReading()
        self.error: BaseException | None = None

    def __enter__(self) -> PauseSampler:
        self._relist()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> PauseReading:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        return self.reading

    def _relist(self) -> None:
        try:
            tids = {int(name) for name in os.listdir(f"/proc/{self.pid}/task")}
        except OSError:
            return
        tids.add(self.pid)
        for tid in tids - self._fds.keys():
            try:
                self._fds[tid] = os.open(f"/proc/{self.pid}/task/{tid}/stat", os.O_RDONLY)
            except OSError:
                pass

    def _sample(self) -> tuple[bool, bool]:
        any_stopped = main_stopped = False
        gone = []
        for tid, fd in self._fds.items():
            try:
                stat = os.pread(fd, 512, 0)
            except OSError:
                gone.append(tid)
                continue
            if not stat:
                gone.append(tid)
                continue
            if state_of(stat) in STOPPED_STATES:
                any_stopped = True
                if tid == self.pid:
                    main_stopped = True
        for tid in gone:
            if tid != self.pid:
                os.close(self._fds.pop(tid))
        return any_stopped, main_stopped

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # reported by the caller; never kill the bench silently
            self.error = error

    def _loop(self) -> None:
        reading = self.reading
        clock = time.perf_counter
        sleep = time.sleep
        interval = self.interval
        start = last_relist = previous_time = clock()
        previous_any, previous_main = self._sample()
        first_stop = last_stop = start if previous_any else None
        reading.episodes = 1 if previous_any else 0
        samples = 1
        while not self._stop.is_set():
            if interval:
                sleep(interval)
            now = clock()
            if now - last_relist >= self.RELIST_SECONDS:
                self._relist()
                last_relist = now
            any_stopped, main_stopped = self._sample()
            now = clock()
            step = now - previous_time
            reading.any_thread_seconds += step * (previous_any + any_stopped) / 2
            reading.main_thread_seconds += step * (previous_main + main_stopped) / 2
            if any_stopped:
                if not previous_any:
                    reading.episodes += 1
                if first_stop is None:
                    first_stop = now
                last_stop = now
            previous_time, previous_any, previous_main = now, any_stopped, main_stopped
            samples += 1
        reading.samples = samples
        reading.mean_sample_interval = (previous_time - start) / max(samples - 1, 1)
        if first_stop is not None and last_stop is not None:
            reading.first_stop_to_last_resume = last_stop - first_stop
