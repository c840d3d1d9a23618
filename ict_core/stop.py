"""Stopping a run. Cleanly: SIGINT/SIGTERM ask the training loop to end after the current step with a checkpoint
(train(handle_signals=True), the command line); the loop reads the request, this module only sets it. Or not:
train.fault_step's injected fault ends the process at once, as a crashed node would (fault_exit)."""
from __future__ import annotations

import os
import signal
import threading


class StopRequest:
    """Set by the SIGINT/SIGTERM handler that train(handle_signals=True) installs; the loop checks it after each
    step, writes a checkpoint and ends the run with status "interrupted"."""

    def __init__(self):
        self.signal: str | None = None


class StopOnSignals:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step (a checkpoint, then status
    "interrupted"); a second SIGINT raises KeyboardInterrupt at once. Signal handlers exist only in the main
    thread of a process, so elsewhere (a Ray Train worker's training thread) this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop: StopRequest, enabled: bool):
        self.stop = stop
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop.signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.stop.signal = name
        more = " (Ctrl-C again quits without one)" if signum == signal.SIGINT else ""
        print(f"\n[ict] {name} received: stopping after this step to write a checkpoint{more}", flush=True)

    def __enter__(self) -> "StopOnSignals":
        if self.enabled:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def fault_exit(folder, step: int, rank: int) -> None:
    """train.fault_step: mark the run folder (rundir.RunFolder.mark_fault; a restart does not fault again) and end
    this process with exit code 1, skipping every cleanup."""
    try:
        folder.mark_fault(step)
    finally:
        print(f"[ict] rank {rank}: injected fault at step {step}", flush=True)
        os._exit(1)
