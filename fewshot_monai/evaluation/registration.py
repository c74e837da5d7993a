"""Single-atlas registration baseline: warp the support label onto the query by image registration.

Each support (atlas) image is registered to the query image with itk-elastix (affine, then B-spline; parameter
maps in :mod:`~fewshot_monai.evaluation.registration_worker`) and its label map is warped with nearest-neighbour
interpolation. One registration per (support, query) pair serves every organ. With several supports (k-shot) the
warped organ masks are fused by majority vote (a voxel is foreground when at least half of the atlases say so).

itk-elastix is an optional dependency (``pip install fewshot-monai[registration]``) and runs in a long-lived
subprocess (:class:`RegistrationWorker`) that never imports torch (it segfaulted next to torch on our machines).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot_monai.errors import FewShotError, InputError
from fewshot_monai.utils.files import atomic_path, atomic_write

__all__ = [
    "INSTALL_HINT",
    "RegistrationUnavailableError",
    "RegistrationFailedError",
    "elastix_available",
    "require_elastix",
    "WarpedAtlas",
    "RegistrationWorker",
    "register_atlases",
    "registration_cache_key",
    "fuse_organ",
]

INSTALL_HINT = (
    "pip install 'fewshot-monai[registration]' (from a clone: pip install -e '.[registration]'), "
    "which installs itk-elastix 0.25.4 with the itk 5.4.7 it is built for"
)


class RegistrationUnavailableError(FewShotError, RuntimeError):
    """itk-elastix is not installed, or does not load (e.g. built for another itk version)."""


class RegistrationFailedError(InputError):
    """elastix failed (or timed out) on one image pair."""


def elastix_available() -> bool:
    """True if the itk-elastix distribution is installed (checked without importing it)."""
    try:
        importlib.metadata.version("itk-elastix")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def require_elastix() -> None:
    """Raise :class:`RegistrationUnavailableError` with the install command if itk-elastix is missing."""
    if not elastix_available():
        raise RegistrationUnavailableError(
            f"the registration baseline needs itk-elastix, which is not installed: {INSTALL_HINT}"
        )


@dataclass
class WarpedAtlas:
    """Support label maps warped onto one query: ``labels`` (K, X, Y, Z) int arrays in the query's loaded grid."""

    labels: np.ndarray
    seconds: float


class RegistrationWorker:
    """A long-lived torch-free subprocess that runs elastix jobs (``registration_worker --serve``).

    Importing itk-elastix's Python wrapping takes ~20 s, so one worker serves a whole evaluation run. Use it as a
    context manager; it is (re)started on demand, e.g. after a job timed out or the process crashed.

    Args:
        threads: elastix threads per job.
        timeout: seconds allowed per job.
        startup_timeout: seconds allowed for the worker to load itk-elastix.
    """

    #: the worker's command (without ``--threads``); tests replace it to simulate a broken install
    command: tuple[str, ...] = (sys.executable, "-m", "fewshot_monai.evaluation.registration_worker", "--serve")

    def __init__(self, threads: int | None = 2, timeout: float = 900.0, startup_timeout: float = 600.0):
        self.threads = threads
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.startup_seconds: float | None = None
        self._proc = None
        self._lines: queue.Queue | None = None
        self._stderr = None

    def __enter__(self) -> RegistrationWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> RegistrationWorker:
        """Start the worker now (it loads itk-elastix, ~20 s) unless it is running; returns ``self``.

        This is the check that elastix works, in a torch-free subprocess: call it before any other work.

        Raises:
            RegistrationUnavailableError: itk-elastix is not installed or does not load (one line: the problem
                and the install command).
        """
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        return self

    def _start(self) -> None:
        from fewshot_monai.evaluation.registration_worker import MARKER

        require_elastix()
        cmd = list(self.command)
        if self.threads:
            cmd += ["--threads", str(int(self.threads))]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(int(self.threads)) if self.threads else "1")
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env, bufsize=1
        )
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self._proc.stdout, self._lines, MARKER), daemon=True).start()
        try:
            reply = self._next(self.startup_timeout, "starting the registration worker")
        except RegistrationFailedError as err:
            raise RegistrationUnavailableError(
                f"the registration worker did not start ({err.problem}); install a matching pair: {INSTALL_HINT}"
            ) from None
        if not reply.get("ready"):
            self.close()
            raise RegistrationUnavailableError(
                f"itk-elastix does not work here ({reply.get('error')}); install a matching pair: {INSTALL_HINT}"
            )
        self.startup_seconds = float(reply.get("seconds", 0.0))

    @staticmethod
    def _pump(stream, lines: queue.Queue, marker: str) -> None:
        for line in stream:
            if line.startswith(marker):
                lines.put(json.loads(line[len(marker) :]))
        lines.put(None)  # end of stream: the worker exited

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return " ".join(self._stderr.read().strip().splitlines()[-3:])[:400]

    def _next(self, timeout: float, what: str) -> dict:
        try:
            reply = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise RegistrationFailedError(None, f"{what}: no answer within {timeout:.0f} s") from None
        if reply is None:
            code = self._proc.wait()
            tail = self._stderr_tail()
            self.close()
            raise RegistrationFailedError(None, f"{what}: the worker exited (code {code}): {tail or 'no output'}")
        return reply

    def register(self, fixed, moving, moving_label, out, **iterations) -> float:
        """Register ``moving`` to ``fixed`` and write the warped ``moving_label`` to ``out``; returns seconds."""
        self.start()
        job = {"fixed": str(fixed), "moving": str(moving), "moving_label": str(moving_label), "out": str(out)}
        job.update({k: int(v) for k, v in iterations.items() if v is not None})
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        try:
            reply = self._next(self.timeout, f"registration of {moving}")
        except RegistrationFailedError as err:
            raise RegistrationFailedError(fixed, err.problem) from err
        if not reply.get("ok"):
            raise RegistrationFailedError(fixed, f"registration of {moving} failed: {reply.get('error')}")
        return float(reply["seconds"])

    def close(self) -> None:
        """Stop the worker process (it exits when its stdin closes; killed if it does not within 10 s)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def register_atlases(
    query_image: str | os.PathLike,
    support_images: Sequence[str | os.PathLike],
    support_labels: Sequence[str | os.PathLike],
    reference,
    *,
    worker: RegistrationWorker | None = None,
    threads: int | None = 2,
    affine_iterations: int | None = None,
    bspline_iterations: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> WarpedAtlas:
    """Register every support image to the query and warp its label map onto the query grid.

    Args:
        query_image: query image file (the fixed image).
        support_images: support image files (k-shot: several).
        support_labels: their label-map files.
        reference: the query as loaded for evaluation (a ``(1, X, Y, Z)`` ``MetaTensor`` in its slicing plane); the
            warped labels are loaded in the same plane and checked to lie on its grid.
        worker: a running :class:`RegistrationWorker` (default: a new one for this call only, which pays the
            ~20 s itk-elastix start-up).
        threads: elastix threads when a new worker is started (the machine is shared: keep it small).
        affine_iterations, bspline_iterations: override the worker's iteration counts (e.g. for tests).
        cache_dir: keep each warped label here (``<key>.nii.gz`` + ``<key>.json`` with the seconds it took) and
            reuse it when the same pair is asked for again with unchanged files and options
            (:func:`registration_cache_key`), e.g. by the EP2 run after the EP1 run. A reused pair reports the
            seconds of the registration that made it, so timings stay comparable.

    Returns:
        the warped label maps and the seconds spent registering and warping (worker start-up excluded).

    Raises:
        RegistrationUnavailableError: itk-elastix is not installed.
        RegistrationFailedError: elastix failed or the warped label does not lie on the query grid.
    """
    from fewshot_monai.data.io import load_volume
    from fewshot_monai.transforms.plane import plane_of

    require_elastix()
    if len(support_images) != len(support_labels) or not support_images:
        raise ValueError("need one label per support image and at least one support")
    own = worker is None
    worker = RegistrationWorker(threads=threads) if own else worker
    iterations = {"affine_iterations": affine_iterations, "bspline_iterations": bspline_iterations}
    seconds = 0.0
    warped = []
    try:
        with tempfile.TemporaryDirectory(prefix="fewshot_registration_") as tmp:
            for k, (image, label) in enumerate(zip(support_images, support_labels)):
                cached = None
                if cache_dir is not None:
                    key = registration_cache_key(query_image, image, label, **iterations)
                    cached = _cached_registration(Path(cache_dir), key)
                if cached is not None:
                    out, took = cached
                    volume = load_volume(out, is_label=True, plane=plane_of(reference))
                else:
                    out = Path(tmp) / f"warped_{k}.nii.gz"
                    start = time.perf_counter()
                    worker.register(query_image, image, label, out, **iterations)
                    volume = load_volume(out, is_label=True, plane=plane_of(reference))
                    took = time.perf_counter() - start
                    if cache_dir is not None:
                        _store_registration(Path(cache_dir), key, out, took)
                seconds += took
                if tuple(volume.shape) != tuple(reference.shape) or not np.allclose(
                    np.asarray(volume.affine), np.asarray(reference.affine), atol=1e-3
                ):
                    raise RegistrationFailedError(query_image, "the warped support label is not on the query's grid")
                warped.append(volume[0].cpu().numpy())
    finally:
        if own:
            worker.close()
    return WarpedAtlas(np.stack(warped), seconds)


def registration_cache_key(query_image, support_image, support_label, **options) -> str:
    """A name for one (query, support) registration: the files (absolute path, size, mtime) and the options."""
    files = []
    for path in (query_image, support_image, support_label):
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"files": files, "options": options, "worker": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cached_registration(cache_dir: Path, key: str) -> tuple[Path, float] | None:
    volume, record = cache_dir / f"{key}.nii.gz", cache_dir / f"{key}.json"
    if not (volume.is_file() and record.is_file()):
        return None
    try:
        return volume, float(json.loads(record.read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None


def _store_registration(cache_dir: Path, key: str, warped: Path, seconds: float) -> None:
    with atomic_path(cache_dir / f"{key}.nii.gz") as tmp:
        tmp.write_bytes(warped.read_bytes())
    with atomic_write(cache_dir / f"{key}.json") as fh:  # written last: its presence marks a complete entry
        json.dump({"seconds": seconds}, fh)


def fuse_organ(atlas: WarpedAtlas, label_id: int) -> np.ndarray:
    """Binary (X, Y, Z) organ mask fused over the warped atlases (majority vote, ties count as foreground)."""
    votes = (atlas.labels == int(label_id)).sum(axis=0)
    return 2 * votes >= atlas.labels.shape[0]
