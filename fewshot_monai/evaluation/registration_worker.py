"""Subprocess worker of the registration baseline: register one atlas to one target with itk-elastix.

One job: ``python -m fewshot_monai.evaluation.registration_worker --fixed Q.nii.gz --moving S.nii.gz
--moving-label S_label.nii.gz --out warped_label.nii.gz`` registers the moving (support) image to the fixed
(query) image, affine then B-spline, warps the moving label with nearest-neighbour interpolation onto the fixed
image grid, writes it and prints one JSON line (``{"seconds": ..., "out": ...}``).

Server: ``python -m fewshot_monai.evaluation.registration_worker --serve`` loads itk-elastix once (importing its
Python wrapping takes ~20 s) and then reads one JSON job per line on stdin (the keyword arguments of
:func:`register_and_warp`), answering each with one line ``MARKER {"ok": true, "seconds": ...}`` or
``MARKER {"ok": false, "error": ...}`` on stdout; the first line is ``MARKER {"ready": true, "seconds": ...}``,
or ``MARKER {"ready": false, "error": ...}`` (and exit) when itk-elastix does not load (:func:`elastix_problem`).
``--check`` only runs that check and prints its result.

This module must never import torch: itk-elastix has crashed (segfault) on our machines when torch is loaded in
the same process, which is why :mod:`fewshot_monai.evaluation.registration` runs it in a separate process. It only
imports the standard library, numpy and itk, and refuses to run if torch got imported anyway.

Parameter maps: elastix's default ``affine`` and ``bspline`` maps (``GetDefaultParameterMap``), changed only
for speed and robustness on abdominal scans:

- both: ``ASGDParameterEstimationMethod = DisplacementDistribution`` (the default "Original" estimation of the
  optimiser's step size took most of the run time), a fixed ``RandomSeed``, no result image;
- affine: ``AutomaticTransformInitialization = true`` (geometric centres aligned first), 200 iterations per
  resolution (3 resolutions);
- B-spline: 3 resolutions, 10 mm final grid, 250 iterations per resolution, Mattes mutual information only (the
  default bending-energy penalty tripled the run time for no Dice gain on CHAOS pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["MARKER", "elastix_problem", "parameter_maps", "register_and_warp", "serve", "main"]

#: prefix of every protocol line the server writes on stdout (anything else there is library noise)
MARKER = "@@fewshot-registration@@ "

AFFINE_ITERATIONS = 200
BSPLINE_ITERATIONS = 250
BSPLINE_GRID_MM = 10.0
RESOLUTIONS = 3
RANDOM_SEED = 121


def _import_itk():
    """Import itk without letting it import torch.

    When torch is installed, itk's array-interop decorator (``itk.support.helpers``) imports it while the
    elastix filters load; we never pass tensors, so that interop is switched off before anything is wrapped.
    """
    import itk.support.helpers as helpers

    helpers._HAVE_TORCH = False
    import itk

    return itk


def parameter_maps(
    affine_iterations: int = AFFINE_ITERATIONS,
    bspline_iterations: int = BSPLINE_ITERATIONS,
    grid_mm: float = BSPLINE_GRID_MM,
    resolutions: int = RESOLUTIONS,
):
    """The elastix parameter object (affine, then B-spline unless ``bspline_iterations`` is 0)."""
    itk = _import_itk()

    params = itk.ParameterObject.New()
    common = {
        "ASGDParameterEstimationMethod": ["DisplacementDistribution"],
        "RandomSeed": [str(RANDOM_SEED)],
        "WriteResultImage": ["false"],
    }
    affine = params.GetDefaultParameterMap("affine", resolutions)
    affine.update(common)
    affine["AutomaticTransformInitialization"] = ["true"]
    affine["MaximumNumberOfIterations"] = [str(int(affine_iterations))]
    params.AddParameterMap(affine)
    if bspline_iterations > 0:
        bspline = params.GetDefaultParameterMap("bspline", resolutions, float(grid_mm))
        bspline.update(common)
        bspline["Metric"] = ["AdvancedMattesMutualInformation"]
        bspline["Registration"] = ["MultiResolutionRegistration"]
        bspline["MaximumNumberOfIterations"] = [str(int(bspline_iterations))]
        params.AddParameterMap(bspline)
    return params


def register_and_warp(
    fixed: str,
    moving: str,
    moving_label: str,
    out: str,
    threads: int | None = None,
    affine_iterations: int = AFFINE_ITERATIONS,
    bspline_iterations: int = BSPLINE_ITERATIONS,
) -> dict:
    """Register ``moving`` to ``fixed``, warp ``moving_label`` (nearest neighbour) and write it to ``out``."""
    if "torch" in sys.modules:
        raise RuntimeError("registration_worker must run in a process without torch (itk-elastix crashes with it)")
    import numpy as np

    itk = _import_itk()

    if threads:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    start = time.perf_counter()
    fixed_image = itk.imread(str(fixed), itk.F)
    moving_image = itk.imread(str(moving), itk.F)
    label_image = itk.imread(str(moving_label), itk.F)
    kwargs = {"number_of_threads": int(threads)} if threads else {}
    _, transform = itk.elastix_registration_method(
        fixed_image,
        moving_image,
        parameter_object=parameter_maps(affine_iterations, bspline_iterations),
        log_to_console=False,
        **kwargs,
    )
    for i in range(transform.GetNumberOfParameterMaps()):
        transform.SetParameter(i, "ResampleInterpolator", "FinalNearestNeighborInterpolator")
        transform.SetParameter(i, "DefaultPixelValue", "0")
    warped = itk.transformix_filter(label_image, transform, log_to_console=False)
    values = np.rint(itk.array_view_from_image(warped)).astype(np.int16)
    result = itk.image_from_array(values)
    result.CopyInformation(fixed_image)
    tmp = f"{out}.part.nii.gz" if str(out).endswith(".nii.gz") else f"{out}.part{os.path.splitext(out)[1]}"
    itk.imwrite(result, tmp, compression=True)
    os.replace(tmp, out)
    return {"seconds": round(time.perf_counter() - start, 3), "out": str(out)}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("itk", "itk-core", "itk-elastix"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def elastix_problem() -> str | None:
    """None when itk-elastix loads and builds our parameter maps here, else the problem in one line.

    Loads the elastix wrapping (``itk.ParameterObject``; ~20 s) the way every job uses it; a mismatched
    itk / itk-elastix pair typically fails here with ``module 'itk' has no attribute 'ParameterObject'``.
    """
    try:
        itk = _import_itk()
        itk.ParameterObject  # noqa: B018  (loads the elastix wrapping now, not during the first job)
        parameter_maps(1, 1)
    except Exception as err:  # any failure means: no working elastix in this environment
        versions = ", ".join(f"{k} {v or 'missing'}" for k, v in _versions().items())
        return f"{type(err).__name__}: {err} ({versions})".replace("\n", " ")
    if "torch" in sys.modules:
        return "itk imported torch; elastix must not run next to it"
    return None


def _reply(payload: dict) -> None:
    sys.stdout.write(MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def serve(threads: int | None = None) -> int:
    """Answer JSON jobs read line by line from stdin until it closes (see the module docstring)."""
    start = time.perf_counter()
    problem = elastix_problem()
    if problem is not None:
        _reply({"ready": False, "error": problem})
        return 1
    _reply({"ready": True, "seconds": round(time.perf_counter() - start, 3), "versions": _versions()})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            job.setdefault("threads", threads)
            _reply({"ok": True, **register_and_warp(**job)})
        except Exception as err:  # report and keep serving: one bad pair must not end the run
            _reply({"ok": False, "error": f"{type(err).__name__}: {err}"})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="read JSON jobs from stdin (see the module docstring)")
    parser.add_argument("--check", action="store_true", help="check that itk-elastix works here; exit 1 if not")
    parser.add_argument("--fixed", help="target (query) image")
    parser.add_argument("--moving", help="atlas (support) image")
    parser.add_argument("--moving-label", help="atlas label map, warped with nearest neighbour")
    parser.add_argument("--out", help="warped label map (on the fixed image grid)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--affine-iterations", type=int, default=AFFINE_ITERATIONS)
    parser.add_argument("--bspline-iterations", type=int, default=BSPLINE_ITERATIONS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.threads)
    if args.check:
        problem = elastix_problem()
        print(problem or f"itk-elastix works: {_versions()}")
        return 1 if problem else 0
    missing = [name for name in ("fixed", "moving", "moving_label", "out") if getattr(args, name) is None]
    if missing:
        parser.error("one job needs --fixed, --moving, --moving-label and --out (or use --serve)")
    info = register_and_warp(
        args.fixed,
        args.moving,
        args.moving_label,
        args.out,
        threads=args.threads,
        affine_iterations=args.affine_iterations,
        bspline_iterations=args.bspline_iterations,
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
