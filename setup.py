"""Builds hycon_ext._C (the custom ops). Install with

    pip install -e . --no-build-isolation

(an isolated build would fetch and build against another torch than the installed one).
CppExtension by default; CUDAExtension when torch has CUDA and nvcc is found, or when
HYCON_FORCE_CUDA=1 (a GPU-less build host). TORCH_CUDA_ARCH_LIST overrides the default
sm_80 / sm_90 targets.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")  # nvcc-only toolkit here; fixes -lcudart
# ninja compiles one file per usable core (its default, cores + 2, only adds memory pressure).
os.environ.setdefault("MAX_JOBS", str(len(os.sched_getaffinity(0))))
# Commands that package the sources without compiling them (an sdist, metadata queries) work
# without torch; building the extension needs the torch it will run with.
_SOURCE_ONLY = {"sdist", "egg_info", "dist_info", "--version", "--name"}

try:
    import torch  # after CUDA_HOME: cpp_extension reads it at import
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    if not _SOURCE_ONLY.intersection(sys.argv[1:]):
        sys.exit(
            "error: building hycon_ext needs torch installed first, then "
            "`pip install -e . --no-build-isolation` (see README.md)"
        )
    torch = None


PCH_HEADER = "csrc/torch_headers.hpp"


def _build_ext_class():
    """cpp_extension's BuildExtension (ninja) that first compiles PCH_HEADER into a precompiled
    header, which every C++ file then includes first (-include): torch's headers are parsed once
    instead of once per file. The header is compiled by the same ninja rule as the sources, so
    with exactly their flags; a precompiled header that does not fit is ignored with a warning
    (-Winvalid-pch) and the file compiles as without it. nvcc's files do not use it."""
    base = BuildExtension.with_options(use_ninja=True)

    class BuildExtensionWithPCH(base):
        def build_extensions(self):
            self.compiler.src_extensions.append(".hpp")
            super().build_extensions()

        def build_extension(self, ext):
            compile_sources = self.compiler.compile  # cpp_extension's ninja compile

            def compile_with_pch(sources, output_dir=None, extra_postargs=None, **kwargs):
                (pch_object,) = compile_sources(
                    [PCH_HEADER], output_dir=output_dir, extra_postargs=extra_postargs, **kwargs
                )
                # GCC looks for <name>.gch beside the header named by -include
                pch_dir = os.path.join(os.path.abspath(output_dir), "pch")
                header = os.path.join(pch_dir, os.path.basename(PCH_HEADER))
                os.makedirs(pch_dir, exist_ok=True)
                for link, target in (
                    (header, os.path.join(ROOT, PCH_HEADER)),
                    (header + ".gch", pch_object),
                ):
                    if os.path.lexists(link):
                        os.remove(link)
                    os.symlink(target, link)
                post = dict(extra_postargs)
                post["cxx"] = post["cxx"] + ["-include", header, "-Winvalid-pch"]
                return compile_sources(
                    sources, output_dir=output_dir, extra_postargs=post, **kwargs
                )

            self.compiler.compile = compile_with_pch
            super().build_extension(ext)

    return BuildExtensionWithPCH


def _sources(pattern):
    # Relative paths: setuptools rejects absolute source paths.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _use_cuda():
    if os.environ.get("HYCON_FORCE_CUDA", "0") == "1":
        return True
    nvcc = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    return torch.version.cuda is not None and (os.path.exists(nvcc) or shutil.which("nvcc"))


def _nvidia_wheel_includes():
    # CUDA torch wheels ship the CUDA headers (cuda_runtime.h, ...) under nvidia/cu1*/include.
    found = []
    for site in sys.path:
        found += glob.glob(os.path.join(site, "nvidia", "cu1*", "include"))
    return sorted(set(found))


def _gencode_flags():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []  # cpp_extension turns TORCH_CUDA_ARCH_LIST into -gencode flags itself
    # Explicit -gencode flags also stop cpp_extension from probing a (maybe absent) GPU.
    return ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]


def _extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp") + _sources("csrc/autograd/*.cpp")
    # -fopenmp: at::parallel_for is inlined into our code and runs serially without it.
    # -g0: Python's build flags ask for debug info (-g), which for torch's templates costs a
    # large share of the compile time and is of no use to a user of the ops.
    cxx = ["-O3", "-fopenmp", "-g0"]
    # The shared libstdc++, named explicitly so that it wins over a static one that the
    # toolchain may add (-static-libstdc++): an extension with its own uninitialised copy of
    # libstdc++'s iostreams loses (gcc 12) or crashes on (gcc 13) every number in its error
    # messages (docs/gpu.md).
    link = ["-fopenmp", "-Wl,--no-as-needed", "-lstdc++", "-Wl,--as-needed"]
    if _use_cuda():
        return CUDAExtension(
            "hycon_ext._C",
            sources + _sources("csrc/cuda/*.cu"),
            include_dirs=[os.path.join(ROOT, "csrc")] + _nvidia_wheel_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"] + _gencode_flags()},
            extra_link_args=link,
        )
    return CppExtension(
        "hycon_ext._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


# Package metadata lives in pyproject.toml; this file only describes the compiled extension.
setup(
    ext_modules=[_extension()] if torch is not None else [],
    cmdclass={"build_ext": _build_ext_class()} if torch is not None else {},
    zip_safe=False,
)
