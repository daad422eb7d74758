#!/usr/bin/env python
"""Helpers of bench/gpu_check.sh: what the machine and MXNet see, the requirements rewrite, and the
check's JSON report. Every subcommand but ``probe`` and ``check-args`` uses the standard library
only, so it runs under the bare machine's Python before any venv exists.

    gpu_probe.py machine                          # nvidia-smi, Python, OS (JSON on stdout)
    gpu_probe.py requirements IN OUT              # IN with mxnet==V -> mxnet-cu112==V + CUDA 11 libraries
    gpu_probe.py unresolved LIBRARY               # the libraries LIBRARY needs that the loader cannot find
    gpu_probe.py python-ok                        # exit 0 when this Python suits the pins (3.8-3.11)
    gpu_probe.py probe --ctx gpu|cpu --out F      # MXNet: GPUs, CUDA, cuDNN, arches, JIT, first kernels
    gpu_probe.py check-args ARG...                # bench/train_throughput.py's parser accepts ARG...
    gpu_probe.py junit XML [DETAILS_DIR]          # pytest's junit XML -> counts and outcomes (JSON)
    gpu_probe.py throughput JSON --models M,... --need P,...   # train_throughput.py's rows, checked
    gpu_probe.py init REPORT MODE BUDGET [KEY=VALUE...]             # a new report
    gpu_probe.py record REPORT NAME STATUS SECONDS LIMIT [DATA] [LOG] [NOTE]   # one step into it
    gpu_probe.py finish REPORT                    # close the report; prints the last line, exit 0/1
"""
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the pins' oldest numpy (1.23.5, which MXNet 1.9.1 needs) has wheels for Python 3.8 to 3.11 only
PYTHON_RANGE = ((3, 8), (3, 11))
GPU_PACKAGE = "mxnet-cu112"
# mxnet-cu112 1.9.1's libmxnet.so bundles no CUDA library: it links to the CUDA 11 runtime, cuDNN 8,
# cuBLAS, cuFFT, cuSOLVER, cuRAND, NCCL, NVRTC and NVTX of the system (CUDA_SONAMES below). NVIDIA's
# PyPI wheels of CUDA 11.8 provide every one of them (the minor-version-compatible successors of 11.2;
# each resolved by ldd against the wheels' lib folders); only the driver's libcuda.so.1 comes from
# the machine. The GPU venv installs these, and the steps run with their lib folders on LD_LIBRARY_PATH.
CUDA_LIBRARY_PINS = ("nvidia-cuda-runtime-cu11==11.8.89", "nvidia-cudnn-cu11==8.9.6.50", "nvidia-cublas-cu11==11.11.3.6",
                     "nvidia-cufft-cu11==10.9.0.58", "nvidia-cusolver-cu11==11.4.1.48", "nvidia-curand-cu11==10.3.0.86",
                     "nvidia-nccl-cu11==2.21.5", "nvidia-cuda-nvrtc-cu11==11.8.89", "nvidia-nvtx-cu11==11.8.86")


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json(path, value):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def first_line(text, limit=400):
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def last_line(text, limit=400):
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:limit]


def error_text(err):
    """One line of an exception: MXNet puts its message after the C++ traceback, on the last line."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    name = type(err).__name__
    return (message if message.startswith(name) else f"{name}: {message}")[:400]


def run(command, timeout=60):
    """(return code, stdout + stderr) of ``command``; (None, why) when it cannot run."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None, f"{command[0]}: not found"
    except subprocess.TimeoutExpired:
        return None, f"{command[0]}: no answer in {timeout} s"
    return proc.returncode, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------- machine

def machine():
    info = {"hostname": platform.node(), "os": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "python_path": sys.executable,
            "pythons": {}}
    for name in ("python3.11", "python3.12", "python3.10", "python3"):
        path = shutil.which(name)
        if path:
            code, out = run([path, "-c", "import sys; print(sys.version.split()[0])"], timeout=20)
            info["pythons"][name] = {"path": path, "version": out.strip() if code == 0 else None}
    fields = ["name", "driver_version", "memory.total", "compute_cap", "pci.bus_id"]
    code, out = run(["nvidia-smi", "--query-gpu=" + ",".join(fields), "--format=csv,noheader"], timeout=30)
    if code is None or code != 0:
        # older drivers know no compute_cap field
        fields = fields[:3]
        code2, out2 = run(["nvidia-smi", "--query-gpu=" + ",".join(fields), "--format=csv,noheader"], timeout=30)
        if code2 == 0:
            code, out = code2, out2
    if code == 0:
        info["gpus"] = [dict(zip(fields, [v.strip() for v in line.split(",")]))
                        for line in out.strip().splitlines() if line.strip()]
        _, header = run(["nvidia-smi"], timeout=30)
        match = re.search(r"CUDA Version:\s*([\d.]+)", header or "")
        info["driver_cuda_version"] = match.group(1) if match else None
    else:
        info["gpus"] = []
        info["nvidia_smi"] = first_line(out)
    count = len(info["gpus"])
    info["summary"] = (f"{count} GPU(s): " + "; ".join(
        f"{g.get('name')} (compute {g.get('compute_cap', '?')}, driver {g.get('driver_version')}, "
        f"{g.get('memory.total')})" for g in info["gpus"]) if count else f"no NVIDIA GPU ({info.get('nvidia_smi')})")
    info["summary"] += f"; Python {info['python']}"
    return info


def python_ok():
    low, high = PYTHON_RANGE
    return low <= sys.version_info[:2] <= high


# ----------------------------------------------------------------------------------- requirements

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def rewrite_requirements(src, dst, package=GPU_PACKAGE):
    """Copy ``src`` to ``dst`` with the ``mxnet`` requirement replaced by ``package`` (same version
    specifier); checks that exactly one line changed and that every requirement still parses."""
    with open(src) as f:
        lines = f.read().splitlines()
    out, changed, requirements = [], [], []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        match = _NAME.match(text) if text and not text.startswith("-") else None
        if match and match.group(1).lower() == "mxnet":
            new = f"{package}{match.group(2)}"
            changed.append({"line": number, "from": text, "to": new})
            out.append(new)
            requirements.append(new)
            continue
        out.append(line)
        if match:
            requirements.append(text)
    if len(changed) != 1:
        raise SystemExit(f"{src}: expected exactly one 'mxnet' requirement to replace, found {len(changed)}")
    if not re.fullmatch(r"==\s*[\d.]+", changed[0]["to"][len(package):].strip()):
        raise SystemExit(f"{src}: line {changed[0]['line']}: mxnet is not pinned to one version ({changed[0]['from']!r})")
    try:  # the same parser as pip's, where the interpreter has it
        from packaging.requirements import Requirement
    except ImportError:
        Requirement = None
    for text in requirements:
        if Requirement is not None:
            try:
                Requirement(text)
            except Exception as err:
                raise SystemExit(f"{dst}: {text!r} does not parse as a requirement ({err})")
        elif not _NAME.match(text):
            raise SystemExit(f"{dst}: {text!r} does not parse as a requirement")
    out += ["# the CUDA 11 libraries that mxnet-cu112's libmxnet.so links to (bench/gpu_probe.py CUDA_LIBRARY_PINS)"]
    out += list(CUDA_LIBRARY_PINS)
    requirements += list(CUDA_LIBRARY_PINS)
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")
    names = [_NAME.match(r).group(1).lower() for r in requirements]
    if "mxnet" in names or names.count(package) != 1:
        raise SystemExit(f"{dst}: the rewrite left {names.count('mxnet')} mxnet and {names.count(package)} {package} lines")
    return {"source": os.path.relpath(src, ROOT) if src.startswith(ROOT) else src, "written": dst,
            "changed": changed[0], "requirements": requirements,
            "checked_with": "packaging.requirements" if Requirement else "regular expression",
            "cuda_libraries": list(CUDA_LIBRARY_PINS),
            "summary": f"{changed[0]['from']} -> {changed[0]['to']} (line {changed[0]['line']}), "
                       f"+ {len(CUDA_LIBRARY_PINS)} CUDA 11 library wheels; {len(requirements)} requirements parse"}


def unresolved(library):
    """The NEEDED libraries of ``library`` that the dynamic loader does not find (ldd, with the
    current LD_LIBRARY_PATH); None where ldd is missing."""
    code, out = run(["ldd", library], timeout=60)
    if code is None:
        return None
    return sorted({line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line})


# ------------------------------------------------------------------------------------------ probe

# the CUDA libraries libmxnet.so of mxnet-cu112 1.9.1 links to (its NEEDED entries, besides the
# driver's libcuda.so.1): the GPU venv installs them from NVIDIA's PyPI wheels (CUDA_LIBRARY_PINS)
CUDA_SONAMES = ("libcudart.so.11.0", "libcudnn.so.8", "libcublas.so.11", "libcublasLt.so.11", "libcufft.so.10",
                "libcusolver.so.11", "libcurand.so.10", "libnccl.so.2", "libnvrtc.so.11.2", "libnvToolsExt.so.1")


def _cuda_library_versions(mx):
    """CUDA runtime, cuDNN and NCCL versions from the libraries this process loaded for libmxnet,
    and where each came from (/proc/self/maps)."""
    import ctypes
    loaded = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if path.startswith("/") and re.search(r"cuda|cudnn|cublas|cufft|cusolver|curand|nccl|nvrtc|nvToolsExt",
                                                      os.path.basename(path)):
                    loaded.add(path)
    except OSError:
        pass
    versions = {"loaded": sorted(loaded)}

    def call(soname, symbol, returns_value=False):
        try:
            function = getattr(ctypes.CDLL(soname), symbol)
        except (OSError, AttributeError) as err:
            return f"{soname}: {err}"
        if returns_value:
            function.restype = ctypes.c_size_t
            return int(function())
        value = ctypes.c_int()
        code = function(ctypes.byref(value))
        return value.value if code == 0 else f"{symbol} returned error {code}"

    def cuda_text(value):  # 11080 -> 11.8
        return {"value": value, "text": f"{value // 1000}.{(value % 1000) // 10}"} if isinstance(value, int) else value

    cudnn = call("libcudnn.so.8", "cudnnGetVersion", returns_value=True)  # 8906 -> 8.9.6
    nccl = call("libnccl.so.2", "ncclGetVersion")  # 22105 -> 2.21.5
    versions.update(
        cuda_runtime=cuda_text(call("libcudart.so.11.0", "cudaRuntimeGetVersion")),
        cuda_driver_api=cuda_text(call("libcudart.so.11.0", "cudaDriverGetVersion")),
        cudnn={"value": cudnn, "text": f"{cudnn // 1000}.{(cudnn % 1000) // 100}.{cudnn % 100}"}
        if isinstance(cudnn, int) else cudnn,
        nccl={"value": nccl, "text": f"{nccl // 10000}.{(nccl % 10000) // 100}.{nccl % 100}"}
        if isinstance(nccl, int) else nccl)
    return versions


def _compute_capability(mx, ctx):
    """(major, minor) of GPU ``ctx`` through the driver API (libcuda.so or libcuda.so.1)."""
    import ctypes
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise OSError("libcuda.so(.1) not found: no NVIDIA driver library")
    major, minor, device = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    for call, args in (("cuInit", (0,)), ("cuDeviceGet", (ctypes.byref(device), ctx.device_id))):
        code = getattr(cuda, call)(*args)
        if code != 0:
            raise RuntimeError(f"{call} failed with CUDA error {code}")
    attribute = getattr(cuda, "cuDeviceGetAttribute")
    for value, attr in ((major, 75), (minor, 76)):  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR
        code = attribute(ctypes.byref(value), attr, device)
        if code != 0:
            raise RuntimeError(f"cuDeviceGetAttribute failed with CUDA error {code}")
    return major.value, minor.value


def fatbin_arches(library):
    """The GPU code inside an ELF shared library, read from its .nv_fatbin section (no CUDA tools
    needed): {"sm": [machine-code arches], "ptx": [PTX arches], "fatbins": count}."""
    import mmap
    import struct
    with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"\x7fELF" or data[4] != 2:
            raise ValueError(f"{library}: not a 64-bit ELF file")
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

        def section(index):  # (name offset, file offset, size)
            base = shoff + index * shentsize
            name, = struct.unpack_from("<I", data, base)
            offset, size = struct.unpack_from("<QQ", data, base + 0x18)
            return name, offset, size
        _, names_offset, _ = section(shstrndx)
        found = None
        for index in range(shnum):
            name, offset, size = section(index)
            end = data.find(b"\0", names_offset + name)
            if data[names_offset + name:end] == b".nv_fatbin":
                found = offset, size
        if found is None:
            return {"sm": [], "ptx": [], "fatbins": 0, "note": "no .nv_fatbin section: no GPU code"}
        offset, size = found
        sm, ptx, count, position, end = set(), set(), 0, offset, offset + size
        while position + 16 <= end:
            magic, _, header, total = struct.unpack_from("<IHHQ", data, position)
            if magic != 0xBA55ED50:  # fatbins are 8-byte aligned, padding between them
                position += 8
                continue
            count += 1
            entry, stop = position + header, position + header + total
            while entry + 32 <= stop:
                kind, _, entry_header, padded = struct.unpack_from("<HHII", data, entry)
                arch, = struct.unpack_from("<I", data, entry + 28)
                (ptx if kind == 1 else sm if kind == 2 else set()).add(arch)
                if entry_header == 0:
                    break
                entry += entry_header + padded
            position = stop
    return {"sm": sorted(sm), "ptx": sorted(ptx), "fatbins": count}


def _compiled_arches(mx):
    library = os.path.join(os.path.dirname(mx.__file__), "libmxnet.so")
    result = fatbin_arches(library)
    result["library"] = library
    return result


def kernels_verdict(capability, arches):
    """(jit, why): whether MXNet's kernels run on a chip of ``capability`` (e.g. 90) as machine
    code (jit False), through the driver's JIT compilation of PTX (True), or not at all
    ("impossible"); None where unknown. ``arches``: _compiled_arches' {"sm": [...], "ptx": [...]}."""
    sm, ptx = arches.get("sm"), arches.get("ptx")
    if capability is None or sm is None:
        return None, "unknown (" + ("no GPU compute capability" if capability is None
                                    else arches.get("note") or arches.get("sm_error") or "no arch list") + ")"
    if capability in sm:
        return False, f"libmxnet.so has sm_{capability} machine code"
    # machine code runs on chips of its major version and a higher minor one (sm_86 on 8.9)
    same_major = [a for a in sm if a // 10 == capability // 10 and a < capability]
    if same_major:
        return False, f"libmxnet.so's sm_{max(same_major)} machine code runs on compute {capability // 10}.{capability % 10}"
    older = [a for a in (ptx or []) if a <= capability]
    if older:
        return True, (f"no sm_{capability} machine code in libmxnet.so (sm: {sm}); the driver JIT-compiles "
                      f"its compute_{max(older)} PTX")
    return "impossible", f"no sm_{capability} code and no PTX at or below it in libmxnet.so (sm: {sm}, ptx: {ptx})"


class Probe:
    """The probe's report, written to ``path`` after every stage, so that a stage that hangs
    (a PTX JIT of all of MXNet's kernels, say) or dies still leaves what came before."""

    def __init__(self, path, ctx_kind):
        self.path, self.report = path, {"ctx": ctx_kind, "started": now(), "stages": {}}
        self.save()

    def save(self):
        if self.path:
            write_json(self.path, self.report)

    @staticmethod
    def _flush():
        """MXNet rethrows a failed asynchronous operation's error at the next wait: take it now."""
        try:
            import mxnet as mx
            mx.nd.waitall()
        except Exception:
            pass

    def stage(self, name, function):
        """Run ``function()``; records its value or error and seconds. Returns (ok, value)."""
        self.report["current_stage"] = name
        self.save()
        start = time.perf_counter()
        try:
            value, ok = function(), True
        except Exception as err:  # MXNetError, CUDA errors, missing libraries: recorded, not raised
            value, ok = {"error": error_text(err)}, False
            self._flush()
        seconds = round(time.perf_counter() - start, 3)
        self.report["stages"][name] = {"ok": ok, "seconds": seconds, "value": value}
        self.report.pop("current_stage", None)
        self.save()
        return ok, value


def _conv_step(mx, ctx, dtype, side=56, channels=64, batch=16):
    """One convolution forward + backward in ``dtype`` on ``ctx``, waited for; finite?"""
    import numpy as np
    from mxnet import autograd
    x = mx.nd.random.uniform(-1, 1, shape=(batch, channels, side, side), ctx=ctx).astype(dtype)
    w = mx.nd.random.uniform(-0.1, 0.1, shape=(channels, channels, 3, 3), ctx=ctx).astype(dtype)
    w.attach_grad()
    with autograd.record():
        y = mx.nd.Convolution(x, w, kernel=(3, 3), pad=(1, 1), num_filter=channels, no_bias=True)
    y.backward()
    grad = w.grad.astype("float32").asnumpy()
    return {"dtype": dtype, "shape": [batch, channels, side, side], "finite": bool(np.isfinite(grad).all())}


def _fused_graph(mx, ctx):
    """A hybridized chain of elementwise operators (what MXNet's pointwise fusion compiles at run
    time with NVRTC on a GPU), forward + backward."""
    import numpy as np
    from mxnet import autograd, gluon

    class Chain(gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return F.relu(x * 2.0 + 1.0) * F.sigmoid(x) - F.tanh(x) * 0.5

    block = Chain()
    block.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(-1, 1, shape=(64, 1024), ctx=ctx)
    x.attach_grad()
    with autograd.record():
        y = block(x)
    y.backward()
    return {"finite": bool(np.isfinite(x.grad.asnumpy()).all()),
            "MXNET_USE_FUSION": os.environ.get("MXNET_USE_FUSION", "(default: 1)")}


def _float16_graph(model="mobilefacenet"):
    """The float16 rewrite of a real backbone, by type inference (runs anywhere)."""
    import numpy as np
    import mxnet as mx
    from recognition.models import get_model
    from recognition.models.precision import low_precision_symbol
    symbol = get_model(model)(mx.sym.var("data"))
    low = low_precision_symbol(symbol, "float16")
    internals = low.get_internals()
    _, out_types, _ = internals.infer_type(data="float32")
    counts = {}
    for name, dtype in zip(internals.list_outputs(), out_types):
        counts[np.dtype(dtype).name] = counts.get(np.dtype(dtype).name, 0) + 1
    _, (head_type,), _ = low.infer_type(data="float32")
    if np.dtype(head_type) != np.float32 or not counts.get("float16"):
        raise RuntimeError(f"{model}: the float16 rewrite gave output {np.dtype(head_type)} and types {counts}")
    return {"model": model, "internal_output_types": counts, "output": np.dtype(head_type).name}


def probe(ctx_kind, out_path):
    p = Probe(out_path, ctx_kind)
    ok, mx = p.stage("import", lambda: __import__("mxnet"))
    if not ok:
        p.report["summary"] = f"MXNet does not import: {mx['error']}"
        p.report["ok"] = False
        p.save()
        return p.report
    p.report["stages"]["import"]["value"] = {"file": mx.__file__}
    p.report["mxnet"] = mx.__version__
    features = mx.runtime.Features()
    p.report["features"] = sorted(name for name, f in features.items() if f.enabled)
    p.report["built_with_cuda"] = features.is_enabled("CUDA")
    p.report["built_with_cudnn"] = features.is_enabled("CUDNN")
    p.report["environment"] = {k: v for k, v in os.environ.items()
                               if k.startswith(("MXNET_", "CUDA_", "NVIDIA_TF32")) or k in ("OMP_NUM_THREADS", "LD_LIBRARY_PATH")}
    ok, count = p.stage("num_gpus", mx.context.num_gpus)
    p.report["num_gpus"] = count if ok else 0
    # on the CPU package too (the dry run): nothing to find there, but the code runs
    p.stage("libraries", lambda: _cuda_library_versions(mx))
    p.stage("compiled_arches", lambda: _compiled_arches(mx))
    if ctx_kind == "gpu":
        if not p.report["built_with_cuda"]:
            p.report.update(ok=False, summary=f"MXNet {mx.__version__} at {mx.__file__} is built without CUDA "
                                              f"(the CPU package, not {GPU_PACKAGE})")
            p.save()
            return p.report
        if not p.report["num_gpus"]:
            error = p.report["stages"]["num_gpus"]["value"]
            runtime = (p.report["stages"]["libraries"].get("value") or {}).get("cuda_runtime")
            p.report.update(ok=False, summary=f"MXNet {mx.__version__} (CUDA build) sees no GPU "
                                              f"({error.get('error') if isinstance(error, dict) else 'num_gpus() == 0'}"
                                              f"{'; ' + runtime if isinstance(runtime, str) else ''})")
            p.save()
            return p.report
        ctx = mx.gpu(0)
        ok, cc = p.stage("compute_capability", lambda: list(_compute_capability(mx, ctx)))
        p.stage("memory", lambda: dict(zip(("free_bytes", "total_bytes"), mx.context.gpu_memory_info(0))))
    else:
        ctx, cc = mx.cpu(), None
    # the first operation pays the context's start and, for a chip newer than the build's machine
    # code, the driver's JIT compilation of every kernel's PTX (CUDA 11.2 loads modules eagerly)
    p.stage("first_operation", lambda: float(mx.nd.ones((4, 4), ctx=ctx).sum().asscalar()))
    conv_ok, _ = p.stage("first_convolution_float32", lambda: _conv_step(mx, ctx, "float32"))
    p.stage("second_convolution_float32", lambda: _conv_step(mx, ctx, "float32"))
    fusion_ok, fusion = p.stage("fused_elementwise_graph", lambda: _fused_graph(mx, ctx))
    f16_ok, f16 = p.stage("convolution_float16", lambda: _conv_step(mx, ctx, "float16"))
    if f16_ok:
        p.stage("second_convolution_float16", lambda: _conv_step(mx, ctx, "float16"))
    p.stage("float16_rewrite_types", _float16_graph)
    stages = p.report["stages"]
    recommend = {}
    if ctx_kind == "gpu" and not fusion_ok and os.environ.get("MXNET_USE_FUSION") != "0":
        recommend["MXNET_USE_FUSION"] = "0"  # NVRTC of CUDA 11.2 may not know this chip
    p.report["recommended_environment"] = recommend
    # the same report on both contexts (the dry run goes through this code too), None where no GPU
    major, minor = cc if isinstance(cc, list) else (None, None)
    capability = major * 10 + minor if major is not None else None
    jit, why = kernels_verdict(capability, stages.get("compiled_arches", {}).get("value") or {})
    libraries = stages.get("libraries", {}).get("value") or {}

    def text(key):
        entry = libraries.get(key)
        return entry.get("text") if isinstance(entry, dict) else "?"
    first = stages["first_operation"]
    p.report.update(compute_capability=f"{major}.{minor}" if major is not None else None,
                    kernels_jit_compiled=jit, kernels_note=why, first_operation_seconds=first["seconds"],
                    cuda_runtime=text("cuda_runtime"), cudnn=text("cudnn"))
    summary = (f"MXNet {mx.__version__}, {p.report['num_gpus']} GPU(s), compute {p.report['compute_capability']}, "
               f"CUDA {p.report['cuda_runtime']}, cuDNN {p.report['cudnn']}; kernels: {why}; first "
               f"{'GPU ' if ctx_kind == 'gpu' else ''}operation {first['seconds']:.1f} s")
    if ctx_kind == "cpu":
        summary = "dry run on the CPU: " + summary
    summary += "; float32 convolution " + ("ok" if conv_ok else "FAILED: " + stages["first_convolution_float32"]["value"]["error"])
    summary += "; float16 convolution " + ("ok" if f16_ok else "not available: " + f16["error"][:160])
    if not fusion_ok:
        summary += f"; fused elementwise graph failed ({fusion['error'][:160]})" + \
                   ("; MXNET_USE_FUSION=0 for the later steps" if recommend else "")
    p.report["float16_convolution"] = f16_ok
    # the check goes on where float32 convolutions run: a float16 failure shows in the later steps
    p.report["ok"] = bool(conv_ok)
    p.report["summary"] = summary
    p.report["finished"] = now()
    p.save()
    return p.report


# ------------------------------------------------------------------------------- check-args, junit

def check_args(argv):
    """bench/train_throughput.py's own parser on ``argv`` (exits 2 with argparse's message)."""
    import importlib.util
    path = os.path.join(HERE, "train_throughput.py")
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(argv)
    return {"argv": argv, "parsed": {k: v for k, v in vars(args).items()}}


def junit(path, details_dir=None):
    import xml.etree.ElementTree as ET
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for suite in suites:
        for case in suite.iter("testcase"):
            name = case.get("name")
            entry = {"name": name, "seconds": round(float(case.get("time") or 0), 2), "outcome": "passed"}
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    entry["outcome"] = "failed" if tag == "failure" else tag
                    entry["message"] = first_line(node.get("message") or node.text or "", 600)
                    break
            counts[entry["outcome"]] += 1
            if details_dir:
                detail = read_json(os.path.join(details_dir, f"{name.split('[')[0]}.json"))
                if detail is not None:
                    entry["measured"] = detail
            tests.append(entry)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests"
    return {"counts": counts, "tests": tests, "summary": summary}


def throughput_rows(path, models, need):
    """The rows of train_throughput.py's JSON, and which (model, precision) of ``need`` are missing."""
    data = read_json(path)
    if data is None:
        raise SystemExit(f"{path}: no JSON written")
    rows = [{k: r.get(k) for k in ("model", "mode", "precision", "samples_per_s", "step_ms_median", "achieved_gflops")}
            for r in data.get("results", [])]
    got = {(r["model"], r["precision"]) for r in rows}
    missing = [f"{m}/{p}" for m in models for p in need if (m, p) not in got]
    result = {"rows": rows, "skipped": data.get("skipped"), "ctx": data.get("ctx"),
              "batch_size": data.get("batch_size"), "classes": data.get("classes"), "steps": data.get("steps"),
              "matmul_peak_gflops": data.get("matmul_peak_gflops"),
              "low_precision_over_float32": data.get("low_precision_over_float32"),
              "summary": "; ".join(f"{r['model']} {r['precision']} {r['samples_per_s']} samples/s" for r in rows)}
    if not rows:
        raise SystemExit(f"{path}: no throughput rows (skipped: {data.get('skipped')})")
    if missing:
        result["missing"] = missing
        result["error"] = f"no row for {', '.join(missing)} (skipped: {data.get('skipped')})"
    return result


# ------------------------------------------------------------------------------------ the report

def init(report_path, mode, budget, *settings):
    """A new report: the mode, the budget, the settings (KEY=VALUE) and the checkout's commit."""
    code, commit = run(["git", "-C", ROOT, "rev-parse", "HEAD"], timeout=10)
    code2, dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], timeout=20)
    write_json(report_path, {
        "check": "bench/gpu_check.sh", "mode": mode, "started": now(), "finished": None, "ok": None,
        "budget_s": int(budget), "commit": commit.strip() if code == 0 else None,
        "modified_files": [line[3:] for line in dirty.splitlines()] if code2 == 0 else None,
        "settings": dict(item.split("=", 1) for item in settings), "steps": []})


def record(report_path, name, status, seconds, limit, data_path=None, log_path=None, note=None):
    report = read_json(report_path, {})
    data = read_json(data_path) if data_path else None
    log = ""
    if log_path and os.path.exists(log_path):
        with open(log_path, errors="replace") as f:
            log = f.read()
    step = {"name": name, "status": status, "seconds": round(float(seconds), 1),
            "limit_s": int(float(limit)) if limit not in ("", None) else None}
    message = None
    if isinstance(data, dict):
        message = data.get("error") if status == "failed" and data.get("error") else data.get("summary")
        if status == "failed" and data.get("current_stage"):  # died or ran out of time inside a stage
            message = f"stopped inside stage {data['current_stage']!r}"
    if status == "failed" and (not message or message == (data or {}).get("summary")):
        # the last line that says something (pytest's summary, a traceback's error, pip's error)
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        wanted = [line for line in lines if re.search(r"error|failed|Error|FAILED|no GPU|not found|cannot", line)]
        detail = (wanted or lines or [""])[-1][:400]
        message = f"{message}: {detail}" if message and detail and detail not in message else (message or detail)
    if note:
        message = f"{note}: {message}" if message else note
    step["message"] = message or ""
    if status == "failed" and log:
        step["log_tail"] = log.strip().splitlines()[-25:]
    report.setdefault("steps", [])
    report["steps"] = [s for s in report["steps"] if s.get("name") != name] + [step]
    if data is not None:
        report[name] = data
    write_json(report_path, report)
    print(f"gpu_check: [{status}] {name} ({step['seconds']:.0f} s): {step['message']}", flush=True)


def finish(report_path):
    report = read_json(report_path, {})
    steps = report.get("steps", [])
    failed = [s for s in steps if s["status"] == "failed"]
    report["finished"] = now()
    report["ok"] = bool(steps) and not failed
    report["failed_steps"] = [s["name"] for s in failed]
    report["first_failure"] = f"{failed[0]['name']}: {failed[0]['message']}" if failed else None
    write_json(report_path, report)
    if failed:
        print(f"gpu_check: FAILED at step {failed[0]['name']}: {failed[0]['message']} "
              f"(failed: {', '.join(report['failed_steps'])}; report {report_path})", flush=True)
        return 1
    skipped = [s["name"] for s in steps if s["status"] == "skipped"]
    print(f"gpu_check: all {len(steps) - len(skipped)} steps ok" +
          (f" ({len(skipped)} skipped: {', '.join(skipped)})" if skipped else "") + f"; report {report_path}", flush=True)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "machine":
        print(json.dumps(machine(), indent=2))
    elif command == "unresolved":
        missing = unresolved(rest[0])
        print(" ".join(missing) if missing is not None else "(ldd not found)")
        return 1 if missing else 0
    elif command == "python-ok":
        return 0 if python_ok() else 1
    elif command == "requirements":
        print(json.dumps(rewrite_requirements(*rest), indent=2))
    elif command == "probe":
        import argparse
        parser = argparse.ArgumentParser(prog="gpu_probe.py probe")
        parser.add_argument("--ctx", choices=("gpu", "cpu"), default="gpu")
        parser.add_argument("--out", default=None)
        args = parser.parse_args(rest)
        sys.path.insert(0, ROOT)
        report = probe(args.ctx, args.out)
        print(report["summary"])
        return 0 if report.get("ok") else 1
    elif command == "check-args":
        sys.path.insert(0, ROOT)
        print(json.dumps(check_args(rest), default=str))
    elif command == "junit":
        print(json.dumps(junit(*rest), indent=2))
    elif command == "throughput":
        def option(name):
            return rest[rest.index(name) + 1].split(",") if name in rest else []
        result = throughput_rows(rest[0], option("--models"), option("--need"))
        print(json.dumps(result, indent=2))
        return 1 if result.get("missing") else 0
    elif command == "init":
        init(*rest)
    elif command == "record":
        record(*rest)
    elif command == "finish":
        return finish(rest[0])
    else:
        print(f"gpu_probe.py: unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
