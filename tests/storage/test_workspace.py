"""Atomic directory replacement: a killed or failed run never loses the previous complete output;
one writer per stage output."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from storage.workspace import Workspace, WorkspaceBusy, atomic_directory, clean_up_last


def test_failure_keeps_the_old_output(tmp_path):
    final = tmp_path / "labels"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("killed")
    assert (final / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


def test_kill_between_the_two_renames_is_repaired(tmp_path):
    final = tmp_path / "labels"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("old")
    os.replace(final, tmp_path / ".labels.old-12345678")  # as if killed right after the first rename
    (tmp_path / ".labels.tmp-abcdef12").mkdir()
    with pytest.raises(RuntimeError), atomic_directory(final):
        raise RuntimeError("this run fails too")
    assert (final / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


def test_one_writer_per_output_and_the_os_releases_a_killed_holder(tmp_path):
    ws = Workspace(tmp_path / "ws")
    hold = "import sys, time\nfrom storage.workspace import Workspace\nwith Workspace(sys.argv[1]).lock('cube'):\n" \
           "    print('held', flush=True)\n    time.sleep(120)\n"  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([sys.executable, "-c", hold, str(ws.root)], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = rf"ws/cube.zarr is being written by another run \(pid {holder.pid} on "
        with pytest.raises(WorkspaceBusy, match=busy), ws.lock("cube"):
            pass
        with ws.lock("catalog"):  # another output is free, and readers take no lock at all
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with ws.lock("cube"), pytest.raises(WorkspaceBusy, match=rf"pid {os.getpid()} .*`"), ws.lock("cube"):
        pass  # SIGKILL never leaves a workspace locked; and a second writer in this process is refused too
    with ws.lock("catalog", shared=True):  # score reading its catalog, and the fetch it runs reading it too
        with ws.lock("catalog", shared=True):
            pass
        with pytest.raises(WorkspaceBusy, match=rf"being read by .* \(pid {os.getpid()} on "), ws.lock("catalog"):
            pass  # the outer reader is still named


def test_a_failed_writers_temporary_directory_is_removed_after_the_late_writes(tmp_path):
    # In a command, tasks still running on the cluster's workers may write after the stage failed or
    # was interrupted (creating their directories again): the removal waits for the block's end.
    final = tmp_path / "catalog"
    with clean_up_last():
        with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
            raise RuntimeError("a task failed")
        assert tmp.exists()
        late = tmp / "dataset" / "Norder=1" / "Dir=0" / "Npix=4.parquet"
        late.parent.mkdir(parents=True, exist_ok=True)
        late.write_bytes(b"a worker's late partition")
    assert not tmp.exists() and not final.exists()
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:  # outside such a block: at once
        raise RuntimeError("a task failed")
    assert not tmp.exists()


def test_the_lock_keeps_naming_who_holds_it_whoever_else_asks(tmp_path):
    """A refused reader or writer leaves the holder's text as it was; of two readers, the one that
    finished is no longer named, the one still reading is."""
    ws = Workspace(tmp_path / "ws")
    root = Path(__file__).resolve().parents[2]
    hold = ("import sys, time\nfrom storage.workspace import Workspace\n"
            "with Workspace(sys.argv[1]).lock('catalog', shared=sys.argv[2] == 'read'):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")  # fmt: skip

    def holding(mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", hold, str(ws.root), mode], cwd=root, stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
        assert proc.stdout.readline().strip() == "held"
        return proc

    writer = holding("write")
    try:
        for shared in (True, True, False):  # readers waiting for the writer, then a second writer
            with pytest.raises(WorkspaceBusy, match=rf"being written by another run \(pid {writer.pid} "), \
                    ws.lock("catalog", shared=shared):  # fmt: skip
                pass
    finally:
        writer.kill()
        writer.wait()
    reader = holding("read")
    try:
        with ws.lock("catalog", shared=True):  # a second reader comes and goes
            pass
        with pytest.raises(WorkspaceBusy, match=rf"being read by .* \(pid {reader.pid} on [^;]*\); wait"), \
                ws.lock("catalog"):  # fmt: skip
            pass
    finally:
        reader.kill()
        reader.wait()
    with ws.lock("catalog"):  # both gone: free again
        pass


def test_a_write_lands_only_while_its_run_holds_the_writers_lock(tmp_path):
    import threading
    import time

    from storage.fence import Fence, StaleWrite

    ws = Workspace(tmp_path / "ws")
    with ws.lock("cube"):
        fence = ws.fence("cube")
        with fence.hold():
            pass
    with pytest.raises(StaleWrite, match=r"not writing .*cube.zarr: .* no longer holds .*\(the run has ended\)"), \
         fence.hold():  # fmt: skip
        pass
    with ws.lock("cube"):  # a later run: the earlier run's fence stays stale
        with pytest.raises(StaleWrite, match="another run holds it now"), fence.hold():
            pass
        with ws.fence("cube").hold():
            pass
    with pytest.raises(RuntimeError, match="holds no writer's lock"):
        ws.fence("cube")
    with ws.lock("cube"), ws.lock("catalog", shared=True):
        with pytest.raises(RuntimeError, match="holds no writer's lock"):
            ws.fence("catalog")  # a reader's lock has no fence
        with pytest.raises(WorkspaceBusy), ws.lock("cube"):
            pass
        ws.fence("cube")  # a refused second lock leaves the first one's token

    # A writer killed by SIGKILL releases no token: the next lock, a reader's too, ends it.
    (ws.root / ".locks" / "cube.fence").write_text("killed-run")
    orphan = Fence(str(ws.root / ".locks" / "cube.fence"), "killed-run", "cube")
    with orphan.hold():
        pass
    with ws.lock("cube", shared=True):
        pass
    with pytest.raises(StaleWrite, match="the run has ended"), orphan.hold():
        pass

    # Releasing waits for a write in flight: it never lands after the run gave up its lock.
    order: list[str] = []
    entered = threading.Event()
    with ws.lock("cube"):
        fenced = ws.fence("cube")

        def write() -> None:
            with fenced.hold():
                entered.set()
                time.sleep(0.3)
                order.append("written")

        writer = threading.Thread(target=write)
        writer.start()
        assert entered.wait(5)
    order.append("released")
    writer.join()
    assert order == ["written", "released"]
