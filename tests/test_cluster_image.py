"""The one image every cluster node runs: docker/Dockerfile, docker/requirements.lock, .dockerignore and cluster.yaml
agree with pyproject.toml's pins and with each other. Static: the files are read, nothing is built or launched.

Each check is a function of the files' text, run once on the real files and once on a copy with one thing wrong
(a wrong pin, a missing package, a dataset download...), which it must refuse.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's venv is 3.11
    tomllib = pytest.importorskip("tomli")

DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCK = ROOT / "docker" / "requirements.lock"
DOCKERIGNORE = ROOT / ".dockerignore"
CLUSTER = ROOT / "cluster.yaml"
MAKEFILE = ROOT / "Makefile"
PYPROJECT = ROOT / "pyproject.toml"

# Installed from PyTorch's CUDA index, never from the lock; and the CUDA 13 runtime of torch's PyPI build.
FROM_CUDA_INDEX = {"torch", "torchvision"}
CUDA13_RUNTIME = re.compile(r"^(nvidia-.*|cuda-toolkit|cuda-bindings)$")
DEV_ONLY = {"pytest", "ruff", "hypothesis", "robustbench"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------------------- parsing


def runtime_requirements(pyproject: str) -> list[Requirement]:
    """What the image must hold: the project's dependencies and its trackers extra (experiments may switch them on)."""
    project = tomllib.loads(pyproject)["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["trackers"]]


def exact_pin(reqs: list[Requirement], name: str) -> str:
    (req,) = [r for r in reqs if norm(r.name) == name]
    (spec,) = req.specifier
    assert spec.operator == "==", req
    return spec.version


def lock_entries(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes), from pip's requirements format."""
    entries: dict[str, tuple[str, int]] = {}
    current = None
    for line in lock.splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if pin:
            current = norm(pin[1])
            assert current not in entries, f"{current} pinned twice"
            entries[current] = (pin[2], 0)
        elif line[:1] not in ("", " ", "#", "\t"):
            raise AssertionError(f"not an exact pin: {line!r}")
        if current and "--hash=sha256:" in line:
            version, n = entries[current]
            entries[current] = (version, n + line.count("--hash=sha256:"))
    return entries


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined, comments dropped and ARG defaults substituted."""
    logical, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        logical.append(buf)
        buf = ""
    args: dict[str, str] = {}
    out = []
    for line in logical:
        instr, _, rest = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "ARG" and "=" in rest:
            key, _, value = rest.strip().partition("=")
            args[key] = value.strip('"')
        rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), rest)
        out.append((instr, " ".join(rest.split())))
    return out


def base_image(dockerfile: str) -> re.Match:
    (frm,) = [a for i, a in dockerfile_instructions(dockerfile) if i == "FROM"]
    image = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>3\d+)-(?P<cuda>cu\d+)", frm)
    assert image, f"not Ray's image for a Ray version, Python and CUDA: {frm}"
    return image


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments of every `python -m pip install` the Dockerfile runs."""
    calls = []
    for instr, args in dockerfile_instructions(dockerfile):
        if instr == "RUN":
            for command in args.split("&&"):
                words = shlex.split(command)
                if words[:4] == ["python", "-m", "pip", "install"]:
                    calls.append(words[4:])
    return calls


def copies(dockerfile: str) -> list[str]:
    """The build-context paths the Dockerfile copies."""
    sources = []
    for instr, args in dockerfile_instructions(dockerfile):
        if instr == "COPY":
            words = [w for w in args.split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def lock_python(makefile: str) -> str:
    """The Python version `make lock` resolves the lock for, as a tag (3.11 -> 311)."""
    (version,) = re.findall(r"--python-version (\S+)", makefile)
    return version.replace(".", "")


def tracked(path: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--", path], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: cannot tell tracked files")
    return out.stdout.split()


# ----------------------------------------------------------------------------------------------------------- checks


def check_base_image(dockerfile: str, pyproject: str, makefile: str) -> None:
    image = base_image(dockerfile)
    ray = exact_pin(runtime_requirements(pyproject), "ray")
    assert image["ray"] == ray, f"the image's Ray {image['ray']} is not pyproject.toml's {ray}"
    assert image["py"] == lock_python(makefile), "the image's Python is not the one the lock is resolved for"


def check_torch_from_cuda_index(dockerfile: str, pyproject: str) -> None:
    cuda = base_image(dockerfile)["cuda"]
    reqs = runtime_requirements(pyproject)
    want = {f"torch=={exact_pin(reqs, 'torch')}+{cuda}", f"torchvision=={exact_pin(reqs, 'torchvision')}+{cuda}"}
    (call,) = [c for c in pip_installs(dockerfile) if any(w.startswith("torch==") for w in c)]
    assert want <= set(call), f"torch/torchvision are not pyproject.toml's pins in the {cuda} build: {call}"
    index = call[call.index("--index-url") + 1]
    assert index == f"https://download.pytorch.org/whl/{cuda}", f"torch not from the {cuda} index: {index}"
    assert not any(w.startswith("--extra-index-url") for w in call), "a second index could supply torch's names"


def check_lock_installed(dockerfile: str) -> None:
    lock_copies = [
        a.split()[-1] for i, a in dockerfile_instructions(dockerfile)
        if i == "COPY" and "docker/requirements.lock" in a.split()
    ]
    assert lock_copies, "the Dockerfile does not copy docker/requirements.lock"
    (call,) = [c for c in pip_installs(dockerfile) if "-r" in c]
    assert call[call.index("-r") + 1] == lock_copies[0]
    assert "--no-deps" in call and "--require-hashes" in call, f"the lock is not installed exactly as pinned: {call}"
    assert "--no-deps" in next(c for c in pip_installs(dockerfile) if "-e" in c), "the project pulls in dependencies"
    assert "python -m pip check" in dockerfile


def check_lock_pins_runtime(lock: str, pyproject: str) -> None:
    pins = lock_entries(lock)
    reqs = runtime_requirements(pyproject)
    for req in reqs:
        name = norm(req.name)
        if name in FROM_CUDA_INDEX:
            continue
        assert name in pins, f"{req.name} (pyproject.toml) is not in the lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"lock's {name}=={pins[name][0]} not {req}"
    for name in ("ray", "pyautoattack"):
        assert pins[name][0] == exact_pin(reqs, name), f"lock's {name} is not pyproject.toml's pin"
    for name in pins:
        assert name not in FROM_CUDA_INDEX, f"{name} must come from PyTorch's CUDA index, not the lock"
        assert not CUDA13_RUNTIME.match(name), f"{name} is the CUDA 13 runtime of torch's PyPI build"
        assert name not in DEV_ONLY, f"{name} is a dev tool, not the runtime"


def check_lock_hashes(lock: str) -> None:
    unhashed = [name for name, (_, n) in lock_entries(lock).items() if n == 0]
    assert not unhashed, f"no hash for {unhashed}: pip --require-hashes refuses the lock"


def check_cluster_image(cluster: str) -> None:
    config = yaml.safe_load(cluster)
    image = config["docker"]["image"]
    assert not image.startswith("rayproject/"), "nodes would run Ray's bare image and install the rest at start"
    assert re.fullmatch(r"[^\s/]+(/[^\s/]+)*/rcnas:[^\s/:]+", image), f"not the project's image: {image}"
    for key in ("head_image", "worker_image"):
        assert key not in config["docker"], f"docker.{key} would run another image on some nodes"


def check_cluster_ami(cluster: str) -> None:
    config = yaml.safe_load(cluster)
    amis = {t: n["node_config"].get("ImageId", "") for t, n in config["available_node_types"].items()}
    assert len(set(amis.values())) == 1, f"node types boot different AMIs: {amis}"
    assert all(ami and ami.lower() != "latest_dlami" for ami in amis.values()), amis
    code = [line.split("#", 1)[0] for line in cluster.splitlines()]
    assert not any("latest_dlami" in line for line in code), "latest_dlami: a 2023 Ubuntu 18.04 AMI with CUDA 11"


def check_cluster_file_mounts(cluster: str, dockerfile: str) -> None:
    mounts = yaml.safe_load(cluster)["file_mounts"]
    project = {remote: local for remote, local in mounts.items() if remote != "~/.ray/auth_token"}
    assert project, "no project code is copied to the nodes"
    copied = copies(dockerfile)
    for remote, local in project.items():
        assert local not in (".", "./", "") and not local.startswith(("/", "~", "..")), f"{local}: not a project path"
        assert (ROOT / local).is_dir(), f"{local}: not a folder of the repository (single files go stale in Docker)"
        assert tracked(local), f"{local}: no tracked file, not project code"
        assert remote == f"~/rcnas/{local}", f"{remote}: not over the image's copy of {local}"
        assert local in copied, f"the image has no copy of {local} for the mount to replace"


def check_no_setup_downloads(cluster: str) -> None:
    config = yaml.safe_load(cluster)
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    for key in keys:
        for command in config.get(key) or []:
            for word in ("download", "datasets", "CIFAR", "pip install", "wget", "curl"):
                assert word not in command, f"{key} fetches at node start ({word}): {command}"


def check_dockerignore(dockerignore: str, dockerfile: str) -> None:
    patterns = [p.strip() for p in dockerignore.splitlines() if p.strip() and not p.lstrip().startswith("#")]
    assert patterns[0] == "*", "the build context must start empty (the .venv alone is 6 GB)"
    let_in = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert let_in == set(copies(dockerfile)), f"let back in {sorted(let_in)}, copied {sorted(copies(dockerfile))}"
    for kept_out in (".venv", "runs", "data", "models", ".git", "wheels"):
        assert not any(p == kept_out or p.startswith(kept_out + "/") for p in let_in), kept_out


# ------------------------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return {
        "dockerfile": DOCKERFILE.read_text(),
        "lock": LOCK.read_text(),
        "dockerignore": DOCKERIGNORE.read_text(),
        "cluster": CLUSTER.read_text(),
        "makefile": MAKEFILE.read_text(),
        "pyproject": PYPROJECT.read_text(),
    }


CHECKS = {
    "base_image": lambda f: check_base_image(f["dockerfile"], f["pyproject"], f["makefile"]),
    "torch_from_cuda_index": lambda f: check_torch_from_cuda_index(f["dockerfile"], f["pyproject"]),
    "lock_installed": lambda f: check_lock_installed(f["dockerfile"]),
    "lock_pins_runtime": lambda f: check_lock_pins_runtime(f["lock"], f["pyproject"]),
    "lock_hashes": lambda f: check_lock_hashes(f["lock"]),
    "cluster_image": lambda f: check_cluster_image(f["cluster"]),
    "cluster_ami": lambda f: check_cluster_ami(f["cluster"]),
    "cluster_file_mounts": lambda f: check_cluster_file_mounts(f["cluster"], f["dockerfile"]),
    "no_setup_downloads": lambda f: check_no_setup_downloads(f["cluster"]),
    "dockerignore": lambda f: check_dockerignore(f["dockerignore"], f["dockerfile"]),
}


@pytest.mark.parametrize("check", CHECKS)
def test_the_image_files_agree(files, check):
    CHECKS[check](files)


def _sub(text: str, old: str, new: str, count: int = 1) -> str:
    if old not in text:  # not an AssertionError: a mutation that no longer applies must not pass as refused
        raise ValueError(f"the mutation no longer applies: {old!r}")
    return text.replace(old, new, count)


def _drop_lock_entry(lock: str, name: str) -> str:
    return re.sub(rf"(?ms)^{re.escape(name)}==.*?(?=^\S)", "", lock, count=1)


# (check, file, mutation): one thing wrong each; the check must refuse it.
MUTATIONS = {
    "image on another Ray": ("base_image", "dockerfile", lambda t: _sub(t, "ray:2.60.0-", "ray:2.59.0-")),
    "pyproject on another Ray": ("base_image", "pyproject", lambda t: _sub(t, "tune]==2.60.0", "tune]==2.61.0")),
    "image on another Python": ("base_image", "dockerfile", lambda t: _sub(t, "-py311-", "-py312-")),
    "torch of another version": (
        "torch_from_cuda_index", "dockerfile", lambda t: _sub(t, "torch==2.14.1", "torch==2.14.0")
    ),
    "torch of another CUDA": ("torch_from_cuda_index", "dockerfile", lambda t: _sub(t, "whl/${CUDA_TAG}", "whl/cu130")),
    "torch with PyPI beside": (
        "torch_from_cuda_index", "dockerfile",
        lambda t: _sub(t, '--index-url "https', '--extra-index-url https://pypi.org/simple --index-url "https'),
    ),
    "lock without hashes checked": (
        "lock_installed", "dockerfile", lambda t: _sub(t, "--no-deps --require-hashes -r", "--no-deps -r")
    ),
    "lock with its dependencies": (
        "lock_installed", "dockerfile", lambda t: _sub(t, "--no-deps --require-hashes -r", "--require-hashes -r")
    ),
    "lock on another Ray": ("lock_pins_runtime", "lock", lambda t: _sub(t, "\nray==2.60.0", "\nray==2.59.0")),
    "lock on another pyautoattack": (
        "lock_pins_runtime", "lock", lambda t: _sub(t, "\npyautoattack==0.2.0", "\npyautoattack==0.1.0")
    ),
    "lock without tqdm": ("lock_pins_runtime", "lock", lambda t: _drop_lock_entry(t, "tqdm")),
    "lock below a floor": ("lock_pins_runtime", "pyproject", lambda t: _sub(t, '"tqdm>=4.66"', '"tqdm>=99"')),
    "lock with torch": ("lock_pins_runtime", "lock", lambda t: t + "torch==2.14.1 \\\n    --hash=sha256:00\n"),
    "lock with CUDA 13": (
        "lock_pins_runtime", "lock", lambda t: t + "nvidia-nccl-cu13==2.30.7 \\\n    --hash=sha256:00\n"
    ),
    "lock with pytest": ("lock_pins_runtime", "lock", lambda t: t + "pytest==9.0.0 \\\n    --hash=sha256:00\n"),
    "lock entry without a hash": ("lock_hashes", "lock", lambda t: t + "tqdm-extra==1.0\n"),
    "Ray's bare image": (
        "cluster_image", "cluster",
        lambda t: _sub(t, '"public.ecr.aws/<registry-alias>/rcnas:<tag>"', "rayproject/ray:2.60.0-py311-gpu"),
    ),
    "latest_dlami": ("cluster_ami", "cluster", lambda t: _sub(t, "ImageId: *ami", "ImageId: latest_dlami")),
    "the whole checkout mounted": ("cluster_file_mounts", "cluster", lambda t: _sub(t, '"rcnas"\n', '"."\n')),
    "an untracked folder mounted": (
        "cluster_file_mounts", "cluster", lambda t: _sub(t, '"~/rcnas/configs": "configs"', '"~/rcnas/runs": "runs"')
    ),
    "a single file mounted": (
        "cluster_file_mounts", "cluster",
        lambda t: _sub(t, '"~/rcnas/configs": "configs"', '"~/rcnas/train.py": "train.py"'),
    ),
    "a dataset download": (
        "no_setup_downloads", "cluster",
        lambda t: _sub(t, "setup_commands:\n", "setup_commands:\n    - python -c \"import torchvision as tv; "
                       "tv.datasets.CIFAR10('data', download=True)\"\n"),
    ),
    "the venv in the build context": ("dockerignore", "dockerignore", lambda t: t + "!.venv\n"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_check_refuses_one_thing_wrong(files, mutation):
    check, name, mutate = MUTATIONS[mutation]
    wrong = dict(files, **{name: mutate(files[name])})
    with pytest.raises(AssertionError):
        CHECKS[check](wrong)
