"""An s3:// base pulled by several worker processes of one node at the same moment (moto S3):
one downloads, the others wait and reuse it, and every file arrives intact."""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKERS = 4
# Each process imports first, says it is ready, then waits for the same start signal.
RACER = """
import json, sys, time
from pathlib import Path
from maskunet_platform.train.base import fetch_s3_folder
uri, cache, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.005)
path, downloaded = fetch_s3_folder(uri, cache)
print(json.dumps({"path": str(path), "downloaded": downloaded}))
"""


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_s3_base_is_downloaded_once_per_node_atomically(s3, tiny_base, tmp_path):
    import s3fs

    bucket = s3.create_bucket("maskunet-bases")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint_url})
    fs.put(f"{tiny_base}/", f"{bucket}/tiny", recursive=True)
    uri, cache, go = f"s3://{bucket}/tiny", tmp_path / "cache", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(WORKERS)]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(cache), str(r), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll()]
        time.sleep(0.05)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert sum(r["downloaded"] for r in results) == 1, results
    assert len({r["path"] for r in results}) == 1
    local = Path(results[0]["path"])
    assert _digests(local) == _digests(Path(tiny_base))  # every file, byte for byte
    # No staging folders left behind; a later call reuses the copy without downloading.
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [local.name]
    from maskunet_platform.train.base import fetch_s3_folder

    assert fetch_s3_folder(uri, cache) == (local, False)
