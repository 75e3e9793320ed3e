"""Image builds from a Containerfile subset, with a cache.

Instructions: ``FROM`` (a tag in the store, ``scratch`` or ``host``),
``RUN``, ``COPY``, ``ENV``, ``WORKDIR``, ``CMD``, ``ENTRYPOINT``, ``USER``
and ``LABEL``. Every instruction after ``FROM`` is a step that yields an
image: ``RUN`` and ``COPY`` add a filesystem layer, the others change only
the config (an "empty layer" in the image history, as Docker records them).

The cache (DESIGN.md §5): a step's key is the digest of (the parent image's
digest, the instruction's text, and for ``COPY`` the digest of the files it
copies). A rebuild where nothing changed runs no step; a change in step k
reuses every step before k.

Example::

    result = build("./app", tag="app:1")     # ./app/Containerfile
    result.cached_steps                      # steps that came from the cache
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycontain.errors import InvalidArgument, NotFound, PycontainError

INSTRUCTIONS = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "CMD", "ENTRYPOINT", "USER", "LABEL")


class BuildError(PycontainError):
    """A RUN step failed; ``output`` holds what it printed."""

    def __init__(self, message: str, *, step: int, instruction: str, returncode: int, output: str) -> None:
        super().__init__(message, op="build", field=f"step {step}", value=instruction,
                         hint=(output.strip().splitlines() or [""])[-1][:300] or None)
        self.step = step
        self.returncode = returncode
        self.output = output


@dataclass(frozen=True)
class Instruction:
    """One line of a Containerfile (continuations joined)."""

    keyword: str
    args: str
    line: int

    @property
    def text(self) -> str:
        return f"{self.keyword} {self.args}"


@dataclass
class StepResult:
    """What one step did: its instruction, whether it came from the cache, and how long it took."""

    index: int
    instruction: str
    cached: bool
    seconds: float
    image: str  # digest


@dataclass
class BuildResult:
    """The built image and a record of each step."""

    image: Any
    steps: list[StepResult] = field(default_factory=list)

    @property
    def cached_steps(self) -> int:
        return sum(s.cached for s in self.steps)

    def frame(self) -> Any:
        """The steps as a DataFrame (index, instruction, cached, seconds)."""
        import pandas as pd

        return pd.DataFrame([s.__dict__ for s in self.steps])


def parse(text: str) -> list[Instruction]:
    """Parse Containerfile text: comments, blank lines and ``\\`` continuations.

    Raises:
        InvalidArgument: an unknown instruction, a missing or misplaced FROM,
            or an instruction without arguments, naming the line.
    """
    if not isinstance(text, str):
        raise InvalidArgument("a Containerfile is text", field="containerfile", value=text)
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword not in INSTRUCTIONS:
            raise InvalidArgument(f"line {start}: unknown instruction", field="containerfile", value=keyword,
                                  hint=f"supported: {', '.join(INSTRUCTIONS)}")
        if not args.strip():
            raise InvalidArgument(f"line {start}: {keyword} needs arguments", field="containerfile", value=full)
        out.append(Instruction(keyword, args.strip(), start))
    if pending:
        raise InvalidArgument("the file ends inside a line continuation", field="containerfile", value=pending)
    if not out or out[0].keyword != "FROM":
        raise InvalidArgument("a Containerfile starts with FROM", field="containerfile",
                              value=out[0].text if out else "", hint="e.g. FROM host, FROM scratch or FROM busybox")
    if any(i.keyword == "FROM" for i in out[1:]):
        raise InvalidArgument("multi-stage builds are not supported", field="containerfile",
                              value=next(i.text for i in out[1:] if i.keyword == "FROM"))
    return out


def _json_or_shell(args: str, keyword: str) -> list[str]:
    """Exec form (a JSON list) or shell form (wrapped in /bin/sh -c)."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except ValueError:
            raise InvalidArgument(f"{keyword}: invalid JSON list", field=keyword, value=args) from None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{keyword}: a JSON list of strings", field=keyword, value=args)
        return value
    return ["/bin/sh", "-c", args]


def _env_pairs(args: str, keyword: str) -> dict[str, str]:
    """``ENV K=V K2="v 2"`` or the legacy ``ENV K V``."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: args.split(None, 1)[1] if len(words) > 1 else ""}
    out = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"{keyword}: expected KEY=VALUE", field=keyword, value=w)
        out[key] = value
    return out


def _copy_sources(args: str, context: Path | None) -> tuple[list[Path], str]:
    if args.startswith("--"):
        raise InvalidArgument("COPY options are not supported", field="COPY", value=args)
    parts = json.loads(args) if args.startswith("[") else shlex.split(args)
    if len(parts) < 2:
        raise InvalidArgument("COPY needs a source and a destination", field="COPY", value=args)
    if context is None:
        raise InvalidArgument("COPY needs a build context directory", field="COPY", value=args,
                              hint="build from a directory that holds a Containerfile")
    *srcs, dest = parts
    root = context.resolve()
    paths = []
    for src in srcs:
        p = (root / src).resolve()
        if p != root and root not in p.parents:
            raise InvalidArgument("COPY source is outside the build context", field="COPY", value=src)
        if not p.exists():
            raise NotFound("COPY source not found in the build context", field="COPY", value=src)
        paths.append(p)
    return paths, dest


def _hash_tree(paths: list[Path], dest: str) -> str:
    """Digest of what COPY would copy: names, modes, link targets and contents."""
    h = hashlib.sha256(dest.encode())
    for top in paths:
        entries = [top] if not top.is_dir() else [top, *sorted(top.rglob("*"))]
        for p in entries:
            st = p.lstat()
            h.update(str(p.relative_to(top.parent)).encode() + b"\0" + oct(st.st_mode).encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()


def _copy_layer(paths: list[Path], dest: str, workdir: str, store: Any) -> Any:
    """A layer holding ``paths`` at ``dest`` (Docker's rules: a directory's contents are copied)."""
    import shutil

    from pycontain.image import Layer

    if not dest.startswith("/"):
        dest = os.path.join(workdir or "/", dest)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / dest.lstrip("/")
        into_dir = dest.endswith("/") or len(paths) > 1 or paths[0].is_dir()
        if into_dir:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
        for src in paths:
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(src, target / src.name if into_dir else target, follow_symlinks=False)
        # Directories COPY creates on the way are 0755, as Docker makes them.
        parent = target if into_dir else target.parent
        while True:
            os.chmod(parent, 0o755)
            if parent == Path(tmp):
                break
            parent = parent.parent
        return Layer.from_dir(tmp, store=store)


class _Cache:
    """step key -> image digest, in the store."""

    def __init__(self, store: Any) -> None:
        self.dir = Path(store.root) / "build-cache"

    def get(self, key: str) -> str | None:
        try:
            return (self.dir / key).read_text().strip()
        except OSError:
            return None

    def put(self, key: str, digest: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.tmp"
        tmp.write_text(digest + "\n")
        os.replace(tmp, self.dir / key)


def _base(args: str, store: Any) -> Any:
    from pycontain.image import Image

    name = args.split()[0]
    if name == "host":
        return Image.from_host(store=store)
    if name == "scratch":
        return Image.from_layers([], store=store)
    return Image.get(name, store=store)


def build(source: str | os.PathLike[str], *, tag: str | None = None, store: Any = None,
          progress: bool = True, no_cache: bool = False, memory: Any = None,
          on_output: Callable[[str], None] | None = None) -> BuildResult:
    """Build an image from a directory with a ``Containerfile`` (or ``Dockerfile``),
    a path to such a file, or Containerfile text.

    Each step's image is cached (see the module docstring). ``RUN`` steps run
    in a container of the image so far, with no network. A progress bar
    (tqdm) shows the steps unless ``progress=False``.

    Returns:
        :class:`BuildResult`; ``.image`` is the image (tagged ``tag``),
        ``.steps`` says which steps came from the cache and how long each took.

    Raises:
        InvalidArgument: a bad Containerfile (naming the line).
        NotFound: the FROM image or a COPY source is missing.
        BuildError: a RUN step exited non-zero (with its output).
    """
    from pycontain.image import _store

    st = _store(store)
    context: Path | None = None
    text: str
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source
                                           and os.path.exists(source)):
        path = Path(source)
        if path.is_dir():
            context = path
            for name in ("Containerfile", "Dockerfile"):
                if (path / name).is_file():
                    text = (path / name).read_text()
                    break
            else:
                raise NotFound("no Containerfile or Dockerfile in the directory", field="path", value=str(path))
        else:
            context = path.parent
            text = path.read_text()
    elif isinstance(source, str):
        text = source
    else:
        raise InvalidArgument("build takes a directory, a file or Containerfile text", field="source", value=source)
    instructions = parse(text)
    cache = _Cache(st)
    image = _base(instructions[0].args, st)
    # scratch and host images are made afresh (with a new creation time) on
    # every build: key the first step on their name, not their digest. (The
    # host base is the live host: a cached step does not see host changes;
    # build with no_cache=True after upgrading the host.)
    base_name = instructions[0].args.split()[0]
    parent_key = base_name if base_name in ("scratch", "host") else image.digest
    steps = instructions[1:]
    result = BuildResult(image=image)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc=f"build {tag or ''}".strip(), unit="step", file=sys.stderr, leave=True)
    try:
        for index, ins in enumerate(steps, 2):
            t0 = time.monotonic()
            key_parts = [parent_key, ins.keyword, ins.args]
            copy_plan = None
            if ins.keyword == "COPY":
                paths, dest = _copy_sources(ins.args, context)
                copy_plan = (paths, dest)
                key_parts.append(_hash_tree(paths, dest))
            key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()
            cached_digest = None if no_cache else cache.get(key)
            cached_image = None
            if cached_digest:
                from pycontain.image import Image

                try:
                    cached_image = Image.get(cached_digest, store=st)
                except NotFound:
                    cached_image = None
            if cached_image is not None:
                image = cached_image
            else:
                image = _run_step(ins, index, image, copy_plan, st, memory, on_output)
                cache.put(key, image.digest)
            parent_key = image.digest
            result.steps.append(StepResult(index, ins.text, cached_image is not None, time.monotonic() - t0,
                                           image.digest))
            if bar is not None:
                bar.set_postfix_str(("cached " if cached_image is not None else "") + ins.text[:40])
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if tag:
        image = image.tag_as(tag)
    result.image = image
    return result


def _run_step(ins: Instruction, index: int, image: Any, copy_plan: Any, store: Any, memory: Any,
              on_output: Callable[[str], None] | None) -> Any:
    cfg = image.config
    kw = ins.keyword
    if kw == "RUN":
        from pycontain.container import Container

        argv = _json_or_shell(ins.args, "RUN")
        chunks: list[str] = []

        def collect(text: str) -> None:
            chunks.append(text)
            if on_output is not None:
                on_output(text)

        c = Container(image=image, command=argv, memory=memory, network="none",
                      env=dict(e.split("=", 1) for e in cfg.env if "=" in e),
                      workdir=cfg.workdir or None, user=cfg.user or None)
        r_out, w_out = os.pipe()
        try:
            try:
                c.start(stdout=w_out, stderr=w_out)
            finally:
                os.close(w_out)
            import codecs

            dec = codecs.getincrementaldecoder("utf-8")("replace")
            while True:
                data = os.read(r_out, 65536)
                if not data:
                    break
                collect(dec.decode(data))
            code = c.wait()
            if code != 0:
                raise BuildError(f"step {index} ({ins.text[:60]}) exited with {code}", step=index,
                                 instruction=ins.text, returncode=code, output="".join(chunks))
            return c.commit(created_by=ins.text)
        finally:
            os.close(r_out)
            c.remove(force=True)
    if kw == "COPY":
        paths, dest = copy_plan
        layer = _copy_layer(paths, dest, cfg.workdir, store)
        return image.with_layer(layer, created_by=ins.text)
    changes: dict[str, Any] = {}
    if kw == "ENV":
        env = {e.split("=", 1)[0]: e.split("=", 1)[1] for e in cfg.env if "=" in e}
        env.update(_env_pairs(ins.args, "ENV"))
        changes["env"] = env
    elif kw == "WORKDIR":
        changes["workdir"] = ins.args if ins.args.startswith("/") else os.path.join(cfg.workdir or "/", ins.args)
    elif kw == "CMD":
        changes["cmd"] = _json_or_shell(ins.args, "CMD")
    elif kw == "ENTRYPOINT":
        changes["entrypoint"] = _json_or_shell(ins.args, "ENTRYPOINT")
    elif kw == "USER":
        changes["user"] = ins.args
    elif kw == "LABEL":
        labels = dict(cfg.labels)
        labels.update(_env_pairs(ins.args, "LABEL"))
        changes["labels"] = labels
    return _with_config(image, ins.text, **changes)


def _with_config(image: Any, created_by: str, **changes: Any) -> Any:
    """The same layers with a changed config: an "empty layer" step in the history."""
    from pycontain.image import Image

    history = list(image.oci_config.get("history") or [])
    history.append({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "created_by": created_by,
                    "empty_layer": True})
    return Image.from_layers(image.layers, config=image.config.replace(**changes), history=history,
                             store=image.store)
