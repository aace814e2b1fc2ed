"""``--data-root URI``: a small CIFAR-10 in its real format behind a ``file://`` URI (and behind a fake object store)
is copied once per node cache, checked, retried, and read like the plain folder; hostile listings and URIs with
credentials are refused; an unreachable bucket is one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rcnas.config import DatasetConfig
from rcnas.data import remote_root
from rcnas.data.registry import load_splits
from rcnas.data.remote_root import HINT, MARKER, local_data_root
from rcnas.data.synthetic import write_cifar10
from rcnas.infra.errors import ConfigError, DataNotFoundError
from tests.conftest import ROOT, run_script

NO_WAIT = (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def cifar_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket") / "cifar"
    write_cifar10(root, train_per_class=4, test_per_class=2)
    return root


@pytest.fixture
def copies(monkeypatch):
    """Counts the copies made (the memo of checked roots cleared, so each call checks the cache as a new process
    would)."""
    monkeypatch.setattr(remote_root, "_READY", {})
    made = []
    real = remote_root._copy

    def counting(*args, **kwargs):
        made.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(remote_root, "_copy", counting)
    return made


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_file_uri_loads_the_same_splits_as_the_folder(cifar_src, tmp_path, monkeypatch, copies):
    import torch

    monkeypatch.setenv("RCNAS_CACHE", str(tmp_path / "cache"))
    cfg = DatasetConfig(name="cifar10", val_fraction=0.25)
    plain, remote = load_splits(cfg, cifar_src), load_splits(cfg, cifar_src.as_uri())
    for a, b in ((plain.train, remote.train), (plain.val, remote.val), (plain.test, remote.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    (copy,) = copies
    assert copy.parent == tmp_path / "cache" / "data" and (copy / MARKER).is_file()
    assert {k: v for k, v in _files(copy).items() if k != MARKER} == _files(cifar_src)
    assert local_data_root(str(cifar_src)) == str(cifar_src) and local_data_root(None) is None  # plain: unchanged


def test_a_second_call_reuses_the_copy_and_a_changed_source_or_copy_is_copied_again(cifar_src, tmp_path, copies):
    cache, uri = tmp_path / "cache", cifar_src.as_uri()
    first = Path(local_data_root(uri, cache))
    stamp = (first / MARKER).stat().st_mtime_ns
    remote_root._READY.clear()
    assert local_data_root(uri, cache) == str(first) and len(copies) == 1
    assert (first / MARKER).stat().st_mtime_ns == stamp, "the marker was not rewritten"

    src = tmp_path / "changed"  # the same names and sizes, other bytes: the listing's times differ
    write_cifar10(src, train_per_class=4, test_per_class=2, seed=1)
    os.utime(src / "cifar-10-batches-py" / "test_batch", ns=(1, 1))
    second = Path(local_data_root(src.as_uri(), cache))
    remote_root._READY.clear()
    write_cifar10(src, train_per_class=4, test_per_class=2, seed=2)
    assert local_data_root(src.as_uri(), cache) == str(second) and len(copies) == 3
    assert _files(second)["cifar-10-batches-py/test_batch"] == (src / "cifar-10-batches-py" / "test_batch").read_bytes()

    remote_root._READY.clear()
    (first / "cifar-10-batches-py" / "data_batch_2").unlink()  # someone tidied the cache by hand
    assert local_data_root(uri, cache) == str(first) and len(copies) == 4
    assert (first / "cifar-10-batches-py" / "data_batch_2").is_file()
    assert not [p for p in (cache / "data").iterdir() if p.name.startswith(".")], "no temporary folder left"


def test_concurrent_callers_on_one_node_copy_once(cifar_src, tmp_path, copies):
    cache, results = tmp_path / "cache", []
    threads = [threading.Thread(target=lambda: results.append(local_data_root(cifar_src.as_uri(), cache)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(copies) == 1 and len(set(results)) == 1 and len(results) == 6


def _marker_inode(uri: str, cache: str) -> tuple[str, int]:
    folder = local_data_root(uri, cache)
    return folder, os.stat(Path(folder) / MARKER).st_ino


def test_concurrent_processes_copy_once(cifar_src, tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = list(pool.map(_marker_inode, [cifar_src.as_uri()] * 3, [str(tmp_path / "cache")] * 3))
    assert len(set(got)) == 1, "one copy (one marker file), reused by the other processes"


def test_a_missing_folder_is_one_line_after_the_retries(tmp_path, monkeypatch, copies):
    sleeps = []
    monkeypatch.setattr(remote_root.time, "sleep", sleeps.append)
    uri = (tmp_path / "nowhere").as_uri()
    with pytest.raises(DataNotFoundError) as err:
        local_data_root(uri, tmp_path / "cache", delays=(0.0, 0.5, 0.0))
    msg = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in msg and sleeps == [0.0, 0.5, 0.0]
    assert msg.startswith(f"--data-root {uri}: cannot list its files after 4 tries (FileNotFoundError: ")
    assert msg.endswith(HINT) and not copies


def test_an_offline_node_is_one_line_and_a_node_with_a_copy_keeps_working(cifar_src, tmp_path, monkeypatch, capsys):
    uri, cache = cifar_src.as_uri(), tmp_path / "cache"
    monkeypatch.setattr(remote_root, "_READY", {})
    folder = local_data_root(uri, cache, delays=NO_WAIT)

    def offline(_uri):
        raise OSError("When resolving region for bucket 'cifar': AWS Error NETWORK_CONNECTION: curl error 6")

    monkeypatch.setattr(remote_root, "_open_fs", offline)
    with pytest.raises(DataNotFoundError, match=r"^--data-root s3://bucket/cifar: cannot open it after 4 tries "
                                                r"\(OSError: When resolving region.*\); is the bucket reachable"):
        local_data_root("s3://bucket/cifar", cache, delays=NO_WAIT)
    remote_root._READY.clear()
    assert local_data_root(uri, cache, delays=NO_WAIT) == folder  # the copy made while online
    assert "warning: --data-root" in capsys.readouterr().err


def test_the_command_line_says_one_line_and_exits_2(tmp_path):
    """Through an entry point (``run_main``), as train.py and evaluate.py report it."""
    code = ("import sys; from rcnas.infra.cli import run_main; from rcnas.data.remote_root import local_data_root; "
            "run_main(lambda: local_data_root(sys.argv[1], sys.argv[2], delays=(0, 0, 0)))")
    r = subprocess.run([sys.executable, "-c", code, (tmp_path / "nowhere").as_uri(), str(tmp_path / "cache")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --data-root file://") and HINT in r.stderr


def test_evaluate_py_with_a_uri_lacking_the_dataset_is_one_line(tmp_path):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "README").write_text("not CIFAR")
    r = run_script("evaluate.py", "--task", "configs/tasks/smoke-cifar10/smoke-c10-target.yaml", "--no-ray",
                   "configs/subnets/cifar10/WRN-A1.yaml",
                   "--data-root", bucket.as_uri(), env={"RCNAS_CACHE": str(tmp_path / "cache")}, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: --data-root {bucket.as_uri()} (copied to ")
    assert "cifar-10-batches-py/ not found" in r.stderr
    assert "put the dataset's extracted files in the bucket" in r.stderr


@pytest.mark.parametrize("uri, secret", [("s3://AKIAEXAMPLE:wJalrXUtnFEMIsecret@bucket/cifar", "wJalrXUtnFEMIsecret"),
                                         ("gs://bucket/cifar?access_token=ya29EXAMPLE", "ya29EXAMPLE")])
def test_a_uri_with_credentials_is_refused(uri, secret, tmp_path, monkeypatch):
    monkeypatch.setenv("RCNAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as err:
        load_splits(DatasetConfig(name="cifar10"), uri)
    msg = str(err.value)
    assert msg.startswith("--data-root ") and "credentials in the URI" in msg and secret not in msg
    assert "\n" not in msg and not (tmp_path / "cache").exists()


def test_a_scheme_pyarrow_cannot_open_is_refused_at_once(tmp_path):
    with pytest.raises(ConfigError, match=r"^--data-root nosuch://bucket/cifar: not a URI pyarrow can open"):
        local_data_root("nosuch://bucket/cifar", tmp_path / "cache", delays=(60.0,))


def test_links_in_a_shared_folder_are_skipped_never_followed(cifar_src, tmp_path, capsys, copies):
    import shutil

    src = tmp_path / "shared"
    shutil.copytree(cifar_src, src)
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "id_rsa").write_text("PRIVATE KEY")
    (src / "cifar-10-batches-py" / "key").symlink_to(outside / "id_rsa")
    (src / "elsewhere").symlink_to(outside, target_is_directory=True)
    before = _files(outside)
    folder = Path(local_data_root(src.as_uri(), tmp_path / "cache"))
    assert "2 symbolic link(s) or special file(s) skipped" in capsys.readouterr().err
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    assert b"PRIVATE KEY" not in b"".join(_files(folder).values())
    assert _files(outside) == before and sorted(p.name for p in outside.iterdir()) == ["deep", "id_rsa"]


class _Bucket(pafs.FileSystemHandler):
    """An object store in a dict (``bucket/key`` -> bytes) that lists whatever keys it is given, as a hostile or
    broken bucket could: the object-store branch of the copy, without a network."""

    def __init__(self, objects: dict[str, bytes], fail_reads: int = 0) -> None:
        self.objects, self.fail_reads = objects, fail_reads

    def get_type_name(self):
        return "fake-bucket"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return [pafs.FileInfo(p, pafs.FileType.File, size=len(self.objects[p])) if p in self.objects
                else pafs.FileInfo(p, pafs.FileType.NotFound) for p in paths]

    def get_file_info_selector(self, selector):
        base = selector.base_dir.rstrip("/") + "/"
        return [pafs.FileInfo(k, pafs.FileType.File, size=len(v), mtime=0) for k, v in self.objects.items()
                if k.startswith(base) or k.startswith("other/")]

    def open_input_stream(self, path):
        import pyarrow as pa

        if self.fail_reads:
            self.fail_reads -= 1
            raise OSError("AWS Error SLOW_DOWN: please reduce your request rate")
        return pa.BufferReader(self.objects[path])

    def _nope(self, *args):
        raise NotImplementedError

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _nope
    move = copy_file = open_input_file = open_output_stream = open_append_stream = _nope


def _serve(monkeypatch, objects: dict[str, bytes], fail_reads: int = 0) -> None:
    monkeypatch.setattr(remote_root, "_open_fs", lambda uri: (pafs.PyFileSystem(_Bucket(objects, fail_reads)),
                                                              "bucket/cifar"))


def test_an_object_store_is_copied_with_retries(cifar_src, tmp_path, monkeypatch, copies):
    import torch

    objects = {f"bucket/cifar/{k}": v for k, v in _files(cifar_src).items()}
    _serve(monkeypatch, objects, fail_reads=2)  # two throttled reads, retried
    monkeypatch.setenv("RCNAS_CACHE", str(tmp_path / "cache"))
    cfg = DatasetConfig(name="cifar10")
    assert torch.equal(load_splits(cfg, "s3://bucket/cifar").test.x, load_splits(cfg, cifar_src).test.x)
    assert len(copies) == 1


@pytest.mark.parametrize("key", ["bucket/cifar/../../../escape", "bucket/cifar/a/../../escape", "bucket/cifar//abs",
                                 "other/escape", "bucket/cifar/./x"])
def test_a_hostile_listing_is_refused_and_nothing_is_written(key, tmp_path, monkeypatch, copies):
    _serve(monkeypatch, {"bucket/cifar/cifar-10-batches-py/test_batch": b"x", key: b"pwned"})
    with pytest.raises(ConfigError, match=r"^--data-root s3://bucket/cifar: the bucket lists .*refusing") as err:
        local_data_root("s3://bucket/cifar", tmp_path / "sandbox" / "cache", delays=NO_WAIT)
    assert "\n" not in str(err.value) and not copies
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.suffix == ".lock" for p in written), written  # the node's lock file, and nothing else anywhere


def test_a_file_shorter_than_listed_is_retried_then_one_line(tmp_path, monkeypatch):
    class Short(_Bucket):
        def get_file_info_selector(self, selector):
            return [pafs.FileInfo(k, pafs.FileType.File, size=len(v) + 1) for k, v in self.objects.items()]

    monkeypatch.setattr(remote_root, "_open_fs", lambda uri: (pafs.PyFileSystem(Short({"bucket/cifar/a": b"abc"})),
                                                              "bucket/cifar"))
    with pytest.raises(DataNotFoundError, match=r"cannot copy a after 4 tries \(OSError: a: 3 bytes read, 4 listed"):
        local_data_root("gs://bucket/cifar", tmp_path / "cache", delays=NO_WAIT)
    assert not [p for p in (tmp_path / "cache" / "data").iterdir() if p.is_dir()], "no partial copy left"


@pytest.mark.ray
def test_workers_on_other_nodes_copy_into_their_own_node_cache(cifar_src, tmp_path):
    """Two simulated nodes, each with its own ``RCNAS_CACHE``: a load on each copies into that node's cache."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        caches = [tmp_path / f"cache-{i}" for i in range(2)]
        for i, cache in enumerate(caches):
            cluster.add_node(num_cpus=1, resources={f"node{i}": 1}, env_vars={"RCNAS_CACHE": str(cache)})
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()

        @ray.remote(num_cpus=1)
        def load(uri: str) -> tuple[str, int]:
            from rcnas.data.registry import load_splits as load_here

            return os.environ["RCNAS_CACHE"], len(load_here(DatasetConfig(name="cifar10"), uri).test)

        got = ray.get([load.options(resources={f"node{i}": 1}).remote(cifar_src.as_uri()) for i in range(2)],
                      timeout=600)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert sorted(c for c, _ in got) == [str(c) for c in caches] and {n for _, n in got} == {20}
    for cache in caches:
        (copy,) = (cache / "data").glob("*/" + MARKER)
        assert (copy.parent / "cifar-10-batches-py" / "test_batch").is_file()
