"""The program's exit (console/exit.py) skips the interpreter's teardown but loses nothing."""
import subprocess
import sys
import textwrap


def test_exit_without_teardown_keeps_buffered_writes_threads_and_exit_handlers(tmp_path):
    script = textwrap.dedent(f"""
        import atexit, threading, time
        from maskunet_platform.console.exit import exit_without_teardown

        unclosed = open({str(tmp_path / "unclosed.txt")!r}, "w")
        unclosed.write("buffered, never closed")  # still in Python's buffer at exit
        def late():
            time.sleep(0.5)
            open({str(tmp_path / "thread.txt")!r}, "w").write("a non-daemon thread finished")
        threading.Thread(target=late).start()
        atexit.register(lambda: open({str(tmp_path / "atexit.txt")!r}, "w").write("exit handler ran"))
        exit_without_teardown(7)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done.stderr
    assert (tmp_path / "unclosed.txt").read_text() == "buffered, never closed"
    assert (tmp_path / "thread.txt").read_text() == "a non-daemon thread finished"
    assert (tmp_path / "atexit.txt").read_text() == "exit handler ran"


def test_the_program_keeps_its_exit_codes():
    bad = subprocess.run([sys.executable, "-m", "maskunet_platform.cli", "train", "--set", "train.steps=abc"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "train.steps" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "maskunet_platform.cli", "no-such-command"],
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "no-such-command" in usage.stderr
    ok = subprocess.run([sys.executable, "-m", "maskunet_platform.cli", "--help"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and "Train, sweep, promote and serve" in ok.stdout
