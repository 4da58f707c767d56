"""tests/hub/testhub.py, the Hub look-alike that `hfms pull` is tested against,
checked with the real `huggingface_hub`: if huggingface_hub downloads from it
into a correct HF cache, the look-alike is close enough to huggingface.co.

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE, ... when it is imported, so
every scenario runs in a fresh `python -c` (this interpreter, which has
huggingface_hub from requirements.txt) with its environment set; the tests
themselves never import it. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTHUB, Hub, run_hf

TOKEN = "hf_testhub_token"
ST = "test/tiny-st"          # a sentence-transformers-like safetensors repo
GATED = "test/gated"
GGUF = "test/tiny-gguf"      # made of --file arguments
CORRUPT = "test/corrupt"     # served with one flipped byte per file


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The repos' files on disk (under a temp folder), and their bytes."""
    root = tmp_path_factory.mktemp("hub-src")
    rnd = random.Random(1234)
    st = {
        "config.json": b'{"architectures": ["BertModel"], "hidden_size": 32}\n',
        "tokenizer.json": json.dumps({"model": {"vocab": {"[PAD]": 0, "a": 1}}}).encode(),
        "model.safetensors": rnd.randbytes(3_000_000),
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
    }
    for name, data in st.items():
        write(root / "st" / name, data)
    # Dot-files and dot-directories are not repo files.
    write(root / "st" / ".hidden", b"not served")
    write(root / "st" / ".git" / "HEAD", b"ref: refs/heads/main\n")

    gated = {"config.json": b'{"gated": true}\n', "model.safetensors": rnd.randbytes(200_000)}
    for name, data in gated.items():
        write(root / "gated" / name, data)

    gguf = {"x-Q4_K_M.gguf": b"GGUF" + rnd.randbytes(400_000), "x-Q8_0.gguf": b"GGUF" + rnd.randbytes(700_000)}
    for name, data in gguf.items():
        write(root / "gguf" / name, data)

    corrupt = {"config.json": b'{"corrupt": "yes"}\n', "model.safetensors": rnd.randbytes(100_001)}
    for name, data in corrupt.items():
        write(root / "corrupt" / name, data)
    return {"root": root, ST: st, GATED: gated, GGUF: gguf, CORRUPT: corrupt}


@pytest.fixture(scope="module")
def hub(sources, tmp_path_factory):
    root = sources["root"]
    h = Hub(tmp_path_factory.mktemp("hub-run"), [
        "--repo", f"{ST}={root / 'st'}",
        "--repo", f"{GATED}={root / 'gated'}", "--gated", GATED, "--token", TOKEN,
        # One file under its own name, one renamed back to it with PATH:NAME.
        "--file", f"{GGUF}={root / 'gguf' / 'x-Q4_K_M.gguf'}",
        "--file", f"{GGUF}={root / 'gguf' / 'x-Q8_0.gguf'}:x-Q8_0.gguf",
        "--repo", f"{CORRUPT}={root / 'corrupt'}",
        "--corrupt", f"{CORRUPT}/config.json", "--corrupt", f"{CORRUPT}/model.safetensors",
    ])
    try:
        yield h
    finally:
        h.stop()


def new_requests(hub: Hub, before: int) -> list[dict]:
    return hub.requests()[before:]


def test_snapshot_download_matches_source(hub, sources, tmp_path):
    before = len(hub.requests())
    res = run_hf(hub, tmp_path, """
        import os
        from huggingface_hub import snapshot_download, HfApi
        path = snapshot_download(P["repo"])
        files = {}
        for d, _, names in os.walk(path):
            for n in names:
                full = os.path.join(d, n)
                files[os.path.relpath(full, path).replace(os.sep, "/")] = open(full, "rb").read().hex()
        # The Hub's checksums for every file (sha256 for LFS files, git
        # blob sha1 for the others) against what was downloaded.
        v = HfApi().verify_repo_checksums(P["repo"], cache_dir=os.environ["HF_HUB_CACHE"])
        out({"path": path, "files": files, "checked": v.checked_count,
             "mismatches": v.mismatches, "missing": v.missing_paths})
    """, repo=ST)
    assert {k: bytes.fromhex(v) for k, v in res["files"].items()} == sources[ST]
    assert res["checked"] == 4 and res["mismatches"] == [] and res["missing"] == []

    # The standard cache layout: snapshots/<commit> with a refs/main to it.
    snapshot = Path(res["path"])
    commit = snapshot.name
    assert snapshot.parent.name == "snapshots"
    assert (snapshot.parent.parent / "refs" / "main").read_text() == commit
    assert (snapshot / "model.safetensors").is_symlink()

    # What huggingface_hub asked for: repo info, the recursive tree at the
    # commit, then per file a HEAD and a GET of /resolve/ at the commit, the
    # LFS file's GET going to the CDN the 302 named.
    reqs = new_requests(hub, before)
    paths = [(r["method"], r["path"].split("?")[0], r["status"]) for r in reqs]
    assert paths[0] == ("GET", f"/api/models/{ST}/revision/main", 200)
    assert paths[1] == ("GET", f"/api/models/{ST}/tree/{commit}", 200)
    assert "recursive=true" in reqs[1]["path"]
    for name in sources[ST]:
        assert ("HEAD", f"/{ST}/resolve/{commit}/{name}", 302 if name.endswith(".safetensors") else 200) in paths
    for name in ("config.json", "tokenizer.json", "1_Pooling/config.json"):
        assert ("GET", f"/{ST}/resolve/{commit}/{name}", 200) in paths
    sha256 = hashlib.sha256(sources[ST]["model.safetensors"]).hexdigest()
    assert [p for p in paths if p[1].startswith("/cdn/")] == [("GET", f"/cdn/{ST}/{sha256}", 200)]
    assert all(r["status"] < 400 for r in reqs)


def test_list_repo_tree_and_model_info(hub, sources, tmp_path):
    res = run_hf(hub, tmp_path, """
        from huggingface_hub import HfApi, RepoFile
        api = HfApi()
        def entries(**kw):
            return sorted((type(e).__name__, e.path, getattr(e, "size", None),
                           e.lfs.sha256 if isinstance(e, RepoFile) and e.lfs else None)
                          for e in api.list_repo_tree(P["repo"], **kw))
        info = api.model_info(P["repo"], files_metadata=True)
        out({"top": entries(), "pooling": entries(path_in_repo="1_Pooling"),
             "all": entries(recursive=True),
             "sha": info.sha, "siblings": sorted((s.rfilename, s.size) for s in info.siblings)})
    """, repo=ST)
    st = sources[ST]
    sha256 = hashlib.sha256(st["model.safetensors"]).hexdigest()
    files = [["RepoFile", n, len(st[n]), sha256 if n.endswith(".safetensors") else None]
             for n in ("config.json", "model.safetensors", "tokenizer.json")]
    pooling = [["RepoFile", "1_Pooling/config.json", len(st["1_Pooling/config.json"]), None]]
    folder = [["RepoFolder", "1_Pooling", None, None]]
    assert res["top"] == sorted(folder + files)
    assert res["pooling"] == pooling
    assert res["all"] == sorted(folder + files + pooling)
    assert res["siblings"] == sorted([n, len(d)] for n, d in st.items())
    assert len(res["sha"]) == 40


def test_hf_hub_download_gguf(hub, sources, tmp_path):
    res = run_hf(hub, tmp_path, """
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(P["repo"], "x-Q4_K_M.gguf")
        out({"path": path, "data": open(path, "rb").read().hex()})
    """, repo=GGUF)
    assert bytes.fromhex(res["data"]) == sources[GGUF]["x-Q4_K_M.gguf"]
    assert res["path"].endswith("x-Q4_K_M.gguf")


def test_scan_cache_dir_reports_both_repos(hub, sources, tmp_path):
    res = run_hf(hub, tmp_path, """
        from huggingface_hub import snapshot_download, hf_hub_download, scan_cache_dir
        snapshot_download(P["st"])
        hf_hub_download(P["gguf"], "x-Q8_0.gguf")
        info = scan_cache_dir()
        out({"warnings": [str(w) for w in info.warnings],
             "repos": {r.repo_id: {"type": r.repo_type, "size": r.size_on_disk, "files": r.nb_files,
                                    "refs": sorted(r.refs)} for r in info.repos}})
    """, st=ST, gguf=GGUF)
    assert res["warnings"] == []
    assert res["repos"] == {
        ST: {"type": "model", "size": sum(map(len, sources[ST].values())), "files": 4, "refs": ["main"]},
        GGUF: {"type": "model", "size": len(sources[GGUF]["x-Q8_0.gguf"]), "files": 1, "refs": ["main"]},
    }


def test_gated_repo_needs_the_token(hub, sources, tmp_path):
    code = """
        from huggingface_hub import snapshot_download, hf_hub_download
        from huggingface_hub.errors import GatedRepoError
        res = {}
        for what, call in [
            ("snapshot", lambda: snapshot_download(P["repo"], token=P["token"])),
            ("file", lambda: hf_hub_download(P["repo"], "model.safetensors", token=P["token"])),
        ]:
            try:
                path = call()
                res[what] = {"ok": path}
            except GatedRepoError as e:
                res[what] = {"gated": e.response.status_code}
        out(res)
    """
    # No token: 401 GatedRepo; a wrong one: 403 GatedRepo. Both GatedRepoError.
    for token, status in ((None, 401), ("hf_wrong", 403)):
        res = run_hf(hub, tmp_path / str(status), code, repo=GATED, token=token)
        assert res == {"snapshot": {"gated": status}, "file": {"gated": status}}

    before = len(hub.requests())
    res = run_hf(hub, tmp_path / "ok", code, repo=GATED, token=TOKEN)
    snapshot = Path(res["snapshot"]["ok"])
    assert {p.name: p.read_bytes() for p in snapshot.iterdir()} == sources[GATED]
    assert Path(res["file"]["ok"]).read_bytes() == sources[GATED]["model.safetensors"]
    # The token goes to the Hub, never to the CDN (another origin).
    reqs = new_requests(hub, before)
    assert reqs and all(r["auth"] for r in reqs if not r["path"].startswith("/cdn/"))
    assert [r["auth"] for r in reqs if r["path"].startswith("/cdn/")] == [False]


def test_corrupt_file(hub, sources, tmp_path):
    # What huggingface_hub (2.4.0) does with a corrupted plain-HTTP download:
    # nothing. It checks only the size (an OSError "Consistency check failed"
    # when it differs), names the blob after the advertised sha256 / ETag
    # without hashing the content, and so caches the corrupt bytes as good.
    # Only an explicit HfApi.verify_repo_checksums (or `hf cache verify`)
    # notices. (hf_xet downloads are verified by Xet; this hub offers none.)
    res = run_hf(hub, tmp_path, """
        import os
        from huggingface_hub import snapshot_download, HfApi
        path = snapshot_download(P["repo"])
        v = HfApi().verify_repo_checksums(P["repo"], cache_dir=os.environ["HF_HUB_CACHE"])
        out({"files": {n: open(os.path.join(path, n), "rb").read().hex() for n in os.listdir(path)},
             "mismatches": sorted((m["path"], m["algorithm"]) for m in v.mismatches)})
    """, repo=CORRUPT)
    assert res["mismatches"] == [["config.json", "git-sha1"], ["model.safetensors", "sha256"]]
    for name, true in sources[CORRUPT].items():
        got = bytes.fromhex(res["files"][name])
        assert len(got) == len(true)
        diff = [i for i in range(len(true)) if got[i] != true[i]]
        assert diff == [len(true) // 2] and got[diff[0]] == true[diff[0]] ^ 0xFF


def request(hub: Hub, method: str, path: str, headers: dict | None = None, port: int | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port or hub.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def test_protocol_details(hub, sources):
    """The headers and status codes `hfms pull` relies on, checked directly."""
    st = sources[ST]
    status, h, body = request(hub, "GET", f"/api/models/{ST}?blobs=true")
    commit = json.loads(body)["sha"]

    # Regular file: served here, ETag = git blob sha1, ranges honoured.
    status, h, body = request(hub, "GET", f"/{ST}/resolve/main/1_Pooling%2Fconfig.json",
                              {"Range": "bytes=3-"})
    data = st["1_Pooling/config.json"]
    assert status == 206 and body == data[3:]
    assert h["Content-Range"] == f"bytes 3-{len(data) - 1}/{len(data)}"
    assert h["X-Repo-Commit"] == commit and h["Accept-Ranges"] == "bytes"
    status, h, _ = request(hub, "HEAD", f"/{ST}/resolve/{commit}/config.json", {"Range": f"bytes={len(st['config.json'])}-"})
    assert status == 416 and h["Content-Range"] == f"bytes */{len(st['config.json'])}"

    # LFS file: a 302 (on GET too) to the CDN, which serves the content.
    status, h, body = request(hub, "GET", f"/{ST}/resolve/main/model.safetensors")
    assert status == 302 and body == b"" and h["Content-Length"] == "0"
    sha256 = h["X-Linked-Etag"].strip('"')
    assert h["X-Linked-Size"] == str(len(st["model.safetensors"])) and h["X-Repo-Commit"] == commit
    location = h["Location"]
    assert location.startswith("http://127.0.0.1:") and location.endswith(f"/cdn/{ST}/{sha256}")
    cdn_port = int(location.split(":")[2].split("/")[0])
    status, h, body = request(hub, "GET", location.split(str(cdn_port), 1)[1], {"Range": "bytes=10-19"}, port=cdn_port)
    assert status == 206 and body == st["model.safetensors"][10:20] and h["ETag"] == f'"{sha256}"'

    # Errors, named in X-Error-Code as the Hub does.
    for path, code in [
        (f"/{ST}/resolve/main/missing.bin", "EntryNotFound"),
        (f"/{ST}/resolve/v1.0/config.json", "RevisionNotFound"),
        (f"/api/models/{ST}/revision/v1.0", "RevisionNotFound"),
        ("/test/missing/resolve/main/config.json", "RepoNotFound"),
        ("/api/models/test/missing", "RepoNotFound"),
    ]:
        status, h, body = request(hub, "GET", path)
        assert (status, h["X-Error-Code"]) == (404, code), path
        assert "error" in json.loads(body)
    assert request(hub, "HEAD", f"/{ST}/resolve/main/missing.bin")[1]["X-Repo-Commit"] == commit
    status, h, body = request(hub, "GET", f"/api/models/{GATED}/tree/main", {"Authorization": "Bearer nope"})
    assert (status, h["X-Error-Code"]) == (403, "GatedRepo")


def test_lfs_blob_id_is_the_pointer_sha():
    """For an LFS file the Hub's blobId / tree oid is the git sha1 of the LFS
    pointer, not of the content: two files of openai-community/gpt2, as the
    Hub lists them (quoted in huggingface_hub's list_repo_tree docstring)."""
    spec = importlib.util.spec_from_file_location("_testhub_under_test", TESTHUB)
    testhub = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = testhub  # dataclasses look their module up there
    spec.loader.exec_module(testhub)
    for sha256, size, blob_id in [
        ("d88b0d6a6ff9c3f8151f9d3228f57092aaea997f09af009eefd7373a77b5abb9", 497764107,
         "8095a62ccb4d806da7666fcda07467e2d150218e"),  # flax_model.msgpack
        ("9be78edb5b928eba33aa88f431551348f7466ba9f5ef3daf1d552398722a5436", 548123560,
         "64eaa9c526867e404b68f2c5d66fd78e27026523"),  # pytorch_model.bin
    ]:
        pointer = testhub.lfs_pointer(sha256, size)
        assert (testhub.git_blob_sha1(pointer), len(pointer)) == (blob_id, 134)


def test_throttle_and_die_after_bytes(sources, tmp_path):
    """--throttle paces the content; --die-after-bytes ends the hub mid-body."""
    root = sources["root"]
    rate, limit = 2_000_000, 600_000
    hub = Hub(tmp_path, ["--repo", f"{ST}={root / 'st'}", "--cdn-same-port",
                         "--throttle", str(rate), "--die-after-bytes", str(limit)])
    try:
        status, h, _ = request(hub, "HEAD", f"/{ST}/resolve/main/model.safetensors")
        assert status == 302 and h["Location"].startswith(f"{hub.base}/cdn/")
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
        conn.request("GET", h["Location"][len(hub.base):])
        r = conn.getresponse()
        assert r.status == 200 and r.headers["Content-Length"] == "3000000"
        start = time.monotonic()
        got = b""
        # read(n) returns b"" once the dying hub closes the socket.
        while chunk := r.read(65536):
            got += chunk
        elapsed = time.monotonic() - start
        conn.close()
        assert got == sources[ST]["model.safetensors"][:limit]
        assert elapsed >= 0.8 * limit / rate, elapsed
        assert hub.proc.wait(timeout=10) == 3
        assert hub.requests()[-1]["path"].startswith("/cdn/")
    finally:
        hub.stop()
