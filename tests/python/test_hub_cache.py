"""`hfms pull / ls / rm` and the real `huggingface_hub` share one HF cache.

The Hub is tests/hub/testhub.py on 127.0.0.1, serving the packaged models
(models/): `hub-test/MiniLM` is the all-MiniLM-L6-v2 folder (a
sentence-transformers safetensors repo), `hub-test/SmolLM2-GGUF` holds the
SmolLM2 Q4_1 GGUF twice, once renamed Q8_0, so the quantisation tag decides
which file is pulled. Then:

1. hfms pulls into a cache, and huggingface_hub judges it: scan_cache_dir
   without warnings, the Hub's commit and refs, blobs named as
   huggingface_hub names them, verify_repo_checksums against the Hub,
   hf_hub_download(local_files_only=True) finding hfms's files; and
   snapshot_download into the same cache fetches only what hfms left out.
2. huggingface_hub's snapshot_download writes a cache; with the Hub stopped
   and HF_HUB_OFFLINE=1, hfms pulls from it, lists it and removes it.
3. An unknown repo and a gated one (no token, a wrong token) fail with a
   message that says why, and leave no snapshot behind.

huggingface_hub runs in a fresh interpreter per step (conftest.run_hf); hfms
runs as a subprocess with the user's HF_* / HFMS_* settings removed.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import Hub, clean_env, hfms_binary, models_dir, run_hf

MINILM = "hub-test/MiniLM"
GGUF = "hub-test/SmolLM2-GGUF"
GATED = "hub-test/Gated"
UNKNOWN = "hub-test/No-Such-Model"
TOKEN = "hf_hub_cache_token"
Q4 = "SmolLM2-135M-Instruct.Q4_1.gguf"
Q8 = "SmolLM2-135M-Instruct.Q8_0.gguf"

# What serving the sentence-transformers model needs at the least (hfms may
# take more small tokenizer / sentence-transformers files), and what it
# should leave on the Hub.
MINILM_CORE = {"config.json", "tokenizer.json", "tokenizer_config.json", "modules.json",
               "1_Pooling/config.json", "model.safetensors"}
MINILM_LEFT_OUT = {"README.md", "data_config.json"}


def repo_folder(cache: Path, repo: str) -> Path:
    return cache / f"models--{repo.replace('/', '--')}"


def files_under(folder: Path) -> dict[str, Path]:
    """Every file under `folder` as testhub serves it (dot-files and
    dot-directories skipped), by its path in the repo."""
    out = {}
    for d, dirs, names in os.walk(folder):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for n in names:
            if not n.startswith("."):
                full = Path(d) / n
                out[full.relative_to(folder).as_posix()] = full
    return out


@pytest.fixture(scope="module")
def sources() -> dict[str, dict[str, Path]]:
    """The hub's repos: file name in the repo -> the source file."""
    models = models_dir()
    minilm = models / "sentence-transformers" / "all-MiniLM-L6-v2"
    gguf = models / "HuggingFaceTB" / "SmolLM2-135M-Instruct" / Q4
    for p in (minilm / "model.safetensors", gguf):
        if not p.is_file():
            pytest.fail(f"{p} is missing (run scripts/fetch-models.sh, or set HFMS_TEST_MODELS)")
    return {
        "minilm_dir": minilm,
        MINILM: files_under(minilm),
        GGUF: {Q4: gguf, Q8: gguf},
        # Gated: the one small file of the pooling module.
        "gated_dir": minilm / "1_Pooling",
        GATED: files_under(minilm / "1_Pooling"),
    }


def hub_args(sources, *repos: str) -> list[str]:
    args = []
    if MINILM in repos:
        args += ["--repo", f"{MINILM}={sources['minilm_dir']}"]
    if GGUF in repos:
        args += ["--file", f"{GGUF}={sources[GGUF][Q4]}",
                 "--file", f"{GGUF}={sources[GGUF][Q8]}:{Q8}"]
    if GATED in repos:
        args += ["--repo", f"{GATED}={sources['gated_dir']}", "--gated", GATED, "--token", TOKEN]
    return args


@pytest.fixture(scope="module")
def hub(sources, tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("hub-run"), hub_args(sources, MINILM, GGUF, GATED))
    try:
        yield h
    finally:
        h.stop()


def hub_commit(hub: Hub, repo: str) -> str:
    with urllib.request.urlopen(f"{hub.base}/api/models/{repo}/revision/main", timeout=10) as r:
        return json.loads(r.read())["sha"]


def hfms(*args, endpoint: str, home: Path, token: str | None = None,
         offline: bool = False) -> subprocess.CompletedProcess:
    """Run the hfms binary with a clean environment: HF_ENDPOINT, HF_HOME
    (an empty folder: no token file), HF_TOKEN only when given."""
    env = clean_env()
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "RUST_LIB_BACKTRACE": "0"})
    if token is not None:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([str(hfms_binary()), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


def ok_json(r: subprocess.CompletedProcess):
    assert r.returncode == 0, f"hfms exited with {r.returncode}:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout)


def assert_no_snapshot(cache: Path, repo: str) -> None:
    snapshots = repo_folder(cache, repo) / "snapshots"
    assert not snapshots.exists() or not any(snapshots.iterdir()), sorted(snapshots.rglob("*"))
    assert not (repo_folder(cache, repo) / "refs" / "main").exists()


# --- 1. hfms writes, huggingface_hub reads ----------------------------------

@pytest.fixture(scope="module")
def pulled(hub, tmp_path_factory):
    """`hfms pull` of both repos into <root>/hub (run_hf's HF_HUB_CACHE)."""
    root = tmp_path_factory.mktemp("hfms-pull")
    cache = root / "hub"
    outcomes = {}
    for spec, repo in ((MINILM, MINILM), (f"{GGUF}:Q4_1", GGUF)):
        r = hfms("pull", spec, "--hf-cache", cache, "--json", endpoint=hub.base, home=root / "home")
        outcomes[repo] = ok_json(r)
    return {"root": root, "cache": cache, "outcomes": outcomes}


def test_pull_outcome_and_layout(hub, sources, pulled):
    cache = pulled["cache"]
    for repo, o in pulled["outcomes"].items():
        commit = hub_commit(hub, repo)
        snapshot = repo_folder(cache, repo) / "snapshots" / commit
        assert (o["repo"], o["commit"], o["offline"]) == (repo, commit, False)
        assert Path(o["snapshot"]) == snapshot
        assert (repo_folder(cache, repo) / "refs" / "main").read_text() == commit
        assert o["downloaded_bytes"] == sum(sources[repo][f].stat().st_size for f in o["files"])
        for name in o["files"]:
            # As huggingface_hub links them: relative, into ../blobs.
            link = snapshot / name
            target = os.readlink(link)
            assert link.is_symlink() and not os.path.isabs(target), (name, target)
            assert Path(os.path.normpath(link.parent / target)).parent == repo_folder(cache, repo) / "blobs"
        assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if not p.is_dir()) \
            == sorted(o["files"])

    minilm = set(pulled["outcomes"][MINILM]["files"])
    assert MINILM_CORE <= minilm <= set(sources[MINILM]), minilm
    assert not minilm & MINILM_LEFT_OUT
    assert pulled["outcomes"][MINILM]["model"] == MINILM

    gguf = pulled["outcomes"][GGUF]
    assert gguf["files"] == [Q4] and gguf["model"] == f"{GGUF}:Q4_1"
    assert Path(gguf["model_path"]) == Path(gguf["snapshot"]) / Q4
    assert not list(repo_folder(cache, GGUF).rglob(Q8))

    # The .locks folder as huggingface_hub keeps it: one per repo.
    assert {p.name for p in (cache / ".locks").iterdir()} <= {repo_folder(cache, r).name for r in (MINILM, GGUF)}

    listed = ok_json(hfms("ls", "--hf-cache", cache, "--json", endpoint=hub.base, home=pulled["root"] / "home"))
    assert {e["repo"]: (e["revisions"], e["files"], e["incomplete_bytes"]) for e in listed} == {
        repo: ([o["commit"]], len(o["files"]), 0) for repo, o in pulled["outcomes"].items()}


def test_huggingface_hub_reads_the_hfms_cache(hub, sources, pulled):
    res = run_hf(hub, pulled["root"], """
        import os
        from huggingface_hub import HfApi, RepoFile, hf_hub_download, scan_cache_dir
        from huggingface_hub.errors import LocalEntryNotFoundError
        cache = os.environ["HF_HUB_CACHE"]
        info = scan_cache_dir()
        repos = {}
        for r in info.repos:
            repos[r.repo_id] = {
                "type": r.repo_type, "size": r.size_on_disk, "nb_files": r.nb_files,
                "refs": {name: rev.commit_hash for name, rev in r.refs.items()},
                "revisions": {rev.commit_hash: {
                    "refs": sorted(rev.refs), "size": rev.size_on_disk, "snapshot": str(rev.snapshot_path),
                    "files": {f.file_path.relative_to(rev.snapshot_path).as_posix():
                              [f.size_on_disk, f.blob_path.name] for f in rev.files},
                } for rev in r.revisions},
            }
        api = HfApi(endpoint=os.environ["HF_ENDPOINT"])
        verify, etags, paths = {}, {}, {}
        for repo, names in P["files"].items():
            v = api.verify_repo_checksums(repo, cache_dir=cache)
            verify[repo] = {"revision": v.revision, "checked": v.checked_count, "mismatches": v.mismatches,
                            "missing": sorted(v.missing_paths), "extra": sorted(v.extra_paths),
                            "path": str(v.verified_path)}
            # The name huggingface_hub gives a blob: the ETag, so the sha256
            # of an LFS file, the git blob sha1 of any other.
            etags[repo] = {e.path: e.lfs.sha256 if e.lfs else e.blob_id
                           for e in api.list_repo_tree(repo, recursive=True) if isinstance(e, RepoFile)}
            for n in names:
                paths[f"{repo}/{n}"] = hf_hub_download(repo, n, local_files_only=True, cache_dir=cache)
        try:
            q8 = hf_hub_download(P["gguf"], P["q8"], local_files_only=True, cache_dir=cache)
        except LocalEntryNotFoundError as e:
            q8 = type(e).__name__
        out({"warnings": [str(w) for w in info.warnings], "size": info.size_on_disk, "repos": repos,
             "verify": verify, "etags": etags, "paths": paths, "q8": q8})
    """, files={r: o["files"] for r, o in pulled["outcomes"].items()}, gguf=GGUF, q8=Q8)

    assert res["warnings"] == []
    assert set(res["repos"]) == {MINILM, GGUF}
    total = 0
    for repo, o in pulled["outcomes"].items():
        got, src, commit = res["repos"][repo], sources[repo], o["commit"]
        sizes = {n: src[n].stat().st_size for n in o["files"]}
        snapshot = str(repo_folder(pulled["cache"], repo) / "snapshots" / commit)
        assert got["type"] == "model"
        assert got["refs"] == {"main": commit}
        assert list(got["revisions"]) == [commit]
        rev = got["revisions"][commit]
        assert rev["refs"] == ["main"] and rev["snapshot"] == snapshot
        assert {n: size for n, (size, _) in rev["files"].items()} == sizes
        assert {n: blob for n, (_, blob) in rev["files"].items()} == {n: res["etags"][repo][n] for n in sizes}
        assert rev["size"] == got["size"] == sum(sizes.values())
        assert got["nb_files"] == len(sizes)
        total += got["size"]

        v = res["verify"][repo]
        assert (v["revision"], v["path"], v["checked"]) == (commit, snapshot, len(sizes))
        assert v["mismatches"] == [] and v["extra"] == []
        assert v["missing"] == sorted(set(src) - set(sizes))

        for n in sizes:
            path = res["paths"][f"{repo}/{n}"]
            assert path == f"{snapshot}/{n}"
            assert filecmp.cmp(path, src[n], shallow=False), n
    assert res["size"] == total
    assert res["verify"][GGUF]["missing"] == [Q8]
    assert res["q8"] == "LocalEntryNotFoundError"


def test_snapshot_download_completes_the_hfms_cache(hub, sources, tmp_path):
    """huggingface_hub, asked for the whole repo, takes hfms's files as its
    own and fetches only the two hfms left out (README.md, data_config.json)."""
    # A cache of its own: the other tests see only what hfms wrote.
    o = ok_json(hfms("pull", MINILM, "--hf-cache", tmp_path / "hub", "--json",
                     endpoint=hub.base, home=tmp_path / "home"))
    before = len(hub.requests())
    res = run_hf(hub, tmp_path, """
        from huggingface_hub import scan_cache_dir, snapshot_download
        path = snapshot_download(P["repo"])
        info = scan_cache_dir()
        r = [r for r in info.repos if r.repo_id == P["repo"]][0]
        out({"path": path, "warnings": [str(w) for w in info.warnings], "size": r.size_on_disk,
             "revisions": [rev.commit_hash for rev in r.revisions], "nb_files": r.nb_files})
    """, repo=MINILM)
    assert res["path"] == o["snapshot"]
    assert res["warnings"] == []
    assert res["revisions"] == [o["commit"]]
    assert res["nb_files"] == len(sources[MINILM])
    assert res["size"] == sum(p.stat().st_size for p in sources[MINILM].values())
    fetched = {r["path"].split("?")[0].rsplit(f"/resolve/{o['commit']}/", 1)[1]
               for r in hub.requests()[before:] if "/resolve/" in r["path"]}
    assert fetched == set(sources[MINILM]) - set(o["files"])
    assert not [r for r in hub.requests()[before:] if r["path"].startswith("/cdn/")]
    for name, src in sources[MINILM].items():
        assert filecmp.cmp(Path(o["snapshot"]) / name, src, shallow=False), name


# --- 2. huggingface_hub writes, hfms reads (offline), lists and removes -------

def test_hfms_uses_a_cache_huggingface_hub_wrote(sources, tmp_path):
    (tmp_path / "hub-run").mkdir()
    h = Hub(tmp_path / "hub-run", hub_args(sources, MINILM))
    try:
        commit = hub_commit(h, MINILM)
        res = run_hf(h, tmp_path, """
            import os
            from huggingface_hub import snapshot_download
            out({"path": snapshot_download(P["repo"], cache_dir=os.environ["HF_HUB_CACHE"])})
        """, repo=MINILM)
    finally:
        h.stop()
    assert h.proc.returncode is not None  # nothing answers at h.base any more
    cache, home = tmp_path / "hub", tmp_path / "home"
    snapshot = repo_folder(cache, MINILM) / "snapshots" / commit
    assert Path(res["path"]) == snapshot

    o = ok_json(hfms("pull", MINILM, "--hf-cache", cache, "--json", endpoint=h.base, home=home, offline=True))
    assert (o["repo"], o["commit"], o["offline"], o["downloaded_bytes"]) == (MINILM, commit, True, 0)
    assert Path(o["snapshot"]) == snapshot
    assert MINILM_CORE <= set(o["files"]) <= set(sources[MINILM])
    assert not set(o["files"]) & MINILM_LEFT_OUT

    # Offline, a repo the cache lacks is an error that says so.
    r = hfms("pull", f"{GGUF}:Q4_1", "--hf-cache", cache, endpoint=h.base, home=home, offline=True)
    assert r.returncode != 0 and "HF_HUB_OFFLINE" in r.stderr, r.stderr
    assert_no_snapshot(cache, GGUF)

    listed = ok_json(hfms("ls", "--hf-cache", cache, "--json", endpoint=h.base, home=home))
    assert [(e["repo"], Path(e["path"]), e["revisions"], e["refs"], e["files"], e["size_bytes"],
             e["incomplete_bytes"]) for e in listed] == [
        (MINILM, repo_folder(cache, MINILM), [commit], [["main", commit]], len(sources[MINILM]),
         sum(p.stat().st_size for p in sources[MINILM].values()), 0)]

    r = hfms("rm", MINILM, "--hf-cache", cache, endpoint=h.base, home=home)
    assert r.returncode == 0, r.stderr
    assert not repo_folder(cache, MINILM).exists()
    assert ok_json(hfms("ls", "--hf-cache", cache, "--json", endpoint=h.base, home=home)) == []
    res = run_hf(h, tmp_path, """
        from huggingface_hub import scan_cache_dir
        info = scan_cache_dir()
        out({"repos": [r.repo_id for r in info.repos], "warnings": [str(w) for w in info.warnings]})
    """)
    assert res == {"repos": [], "warnings": []}


# --- 3. errors ----------------------------------------------------------------

def test_unknown_repo(hub, tmp_path):
    cache = tmp_path / "hub"
    r = hfms("pull", UNKNOWN, "--hf-cache", cache, endpoint=hub.base, home=tmp_path / "home")
    assert r.returncode != 0
    assert "no such model repo" in r.stderr and UNKNOWN in r.stderr, r.stderr
    assert_no_snapshot(cache, UNKNOWN)

    # A quantisation the GGUF repo lacks: the error names the ones it has.
    r = hfms("pull", f"{GGUF}:Q2_K", "--hf-cache", cache, endpoint=hub.base, home=tmp_path / "home")
    assert r.returncode != 0 and "Q4_1" in r.stderr and "Q8_0" in r.stderr, r.stderr
    assert_no_snapshot(cache, GGUF)


def test_gated_repo_needs_the_token(hub, sources, tmp_path):
    cache, home = tmp_path / "hub", tmp_path / "home"
    for token in (None, "hf_wrong"):
        r = hfms("pull", GATED, "--hf-cache", cache, endpoint=hub.base, home=home, token=token)
        assert r.returncode != 0
        assert "HF_TOKEN" in r.stderr and GATED in r.stderr, (token, r.stderr)
        assert_no_snapshot(cache, GATED)

    # The right token opens it (--include: the repo has no weights to choose).
    o = ok_json(hfms("pull", GATED, "--include", "config.json", "--hf-cache", cache, "--json",
                     endpoint=hub.base, home=home, token=TOKEN))
    assert o["files"] == ["config.json"]
    assert filecmp.cmp(Path(o["snapshot"]) / "config.json", sources[GATED]["config.json"], shallow=False)
